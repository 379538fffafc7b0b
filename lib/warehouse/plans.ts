/**
 * The vocabulary of the BlockIndex's placement decisions: a block's entry, and the plans and moves
 * that make room for it (block-index.ts makes them; placement.ts and `kvtier sim` carry them out).
 */

export const ABSENT = -1;

export interface BlockEntry {
  /** Slot per tier, ABSENT where the block has no copy. */
  readonly slots: number[];
  /** Payload bytes (the Warehouse's blockBytes, or less for a partial block). */
  length: number;
  /** crc32c of the payload. */
  checksum: number;
  priority: number;
  /** Leases held by readers and pin(); a pinned block is never evicted. */
  pins: number;
  /** Tiers where the block is being copied in or out: not evictable there until committed. */
  busy: number;
}

/** One step of a plan: copy `key` from one tier's slot to another's, or drop that copy. */
export interface Move<K> {
  key: K;
  fromTier: number;
  fromSlot: number;
  /** ABSENT: the copy in fromTier is dropped without being written anywhere. */
  toTier: number;
  toSlot: number;
  /** Whether toSlot was free (true) or is the slot of a block evicted by a later move. */
  toFresh: boolean;
}

/**
 * What must happen before `key` can occupy `slot` in `tier`: `moves` in order (each frees the
 * slot a later step, or the key, reuses).
 */
export interface Plan<K> {
  key: K;
  tier: number;
  slot: number;
  /** Whether slot was free (true) or comes from an evicted block. */
  fresh: boolean;
  moves: Move<K>[];
  /**
   * Whether the tier's policy was told of the key at plan time (plan() does, as the simulator's
   * place() does at once): commit() then does not tell it again, and abort() takes it back.
   */
  told?: boolean;
}
