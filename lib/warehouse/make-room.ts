/**
 * Making room: the victims of plans written down a tier before their slots are reused (the
 * placement pipeline's first step, placement.ts), and the victims an encoding tier's codec refused
 * evicted instead.
 */
import type { IoEngine } from '../core/engine.js';
import type { KvtierError } from '../core/errors.js';
import type { Key } from '../keys/keys.js';
import { ABSENT, type BlockIndex, type Plan } from './block-index.js';
import type { ChangeFeed } from './changes.js';
import type { StatsBook } from './stats.js';
import type { SlotBlock, SlotPlace, Tier } from './tier.js';
import { TransferRound } from './transfers.js';

/** Why a block could not be placed. */
export type PlaceFailure = 'no-space' | 'io-error';

export function failureOf(error: KvtierError | undefined): PlaceFailure {
  return error?.code === 'KVTIER_NO_SPACE' ? 'no-space' : 'io-error';
}

/** The Placement's parts making room uses (placement.ts's PlacementEnv has them). */
export interface RoomEnv {
  readonly index: BlockIndex<Key>;
  readonly tiers: readonly Tier[];
  readonly stats: StatsBook;
  readonly feed: ChangeFeed;
  readonly fileEngine: IoEngine;
}

/** What of the Placement making room uses. */
export interface RoomMaker {
  readonly env: RoomEnv;
  place(tier: number, slot: number): SlotPlace;
  describeAll(round: TransferRound, landing: readonly SlotBlock[][]): void;
  runRound(round: TransferRound): ReturnType<TransferRound['run']>;
  fileTier(): number | undefined;
}

/**
 * Carries out the moves of plans: victims written down a tier, deepest tier first, so every
 * slot a move frees is free before the next move (or the new block) reuses it. Returns the
 * plans whose moves failed, and why; those must be aborted, not committed.
 */
export async function makeRoom(
  exec: RoomMaker,
  plans: readonly Plan<Key>[],
  /** Victims an encoding tier's codec refused (a NaN, say): they can never move down. */
  refused: { key: Key; tier: number }[] = [],
): Promise<Map<Plan<Key>, PlaceFailure>> {
  const { index, tiers, stats } = exec.env;
  const failed = new Map<Plan<Key>, PlaceFailure>();
  for (let from = tiers.length - 1; from >= 0; from--) {
    const round = new TransferRound();
    const owners: Plan<Key>[] = [];
    const dests: number[] = [];
    const blocks: SlotBlock[] = [];
    const sources: number[] = [];
    const landing = tiers.map((): SlotBlock[] => []);
    for (const plan of plans) {
      // A plan whose deeper move failed is aborted: its victims keep their slots, so nothing may
      // be written over them now.
      if (failed.has(plan)) continue;
      for (const m of plan.moves) {
        if (m.fromTier !== from || m.toTier === ABSENT) continue;
        const e = index.get(m.key)!;
        round.move(exec.place(m.fromTier, m.fromSlot), exec.place(m.toTier, m.toSlot), e.length);
        const block = { slot: m.toSlot, key: m.key, length: e.length, checksum: e.checksum };
        // An encoding tier's header needs the stored bytes' CRC: written once they are down.
        if (!tiers[m.toTier]!.codec) landing[m.toTier]!.push(block);
        blocks.push(block);
        sources.push(m.fromTier);
        owners.push(plan);
        dests.push(m.toTier);
        stats.tiers[m.fromTier]!.bytesOut += e.length;
        stats.tiers[m.toTier]!.bytesIn += e.length;
      }
    }
    if (round.length === 0) continue;
    exec.describeAll(round, landing);
    const coded = tiers.map((): SlotBlock[] => []);
    const codedOwners: Plan<Key>[] = [];
    (await exec.runRound(round)).forEach((o, n) => {
      if (!o.ok) {
        failed.set(owners[n]!, failureOf(o.error));
        stats.ioError(dests[n]);
        if (o.refused) refused.push({ key: blocks[n]!.key, tier: sources[n]! });
      } else if (o.stored !== undefined) {
        tiers[dests[n]!]!.recordStored?.(blocks[n]!.slot, o.stored);
        coded[dests[n]!]!.push({ ...blocks[n]!, stored: o.stored });
        codedOwners.push(owners[n]!);
      }
    });
    if (codedOwners.length === 0) continue;
    const headers = new TransferRound();
    exec.describeAll(headers, coded);
    const r = await exec.env.fileEngine.submit(headers.file);
    if (!r.ok) {
      const why = failureOf(r.errors.find((e) => e !== undefined));
      for (const plan of codedOwners) failed.set(plan, why);
      stats.ioError(exec.fileTier());
    }
  }
  return failed;
}

/**
 * Evicts victims whose demotion the codec refused, once their plans are aborted: kept, they
 * would be picked again by every placement that needs room and fail it. The placement that
 * found them fails; the next one finds the room.
 */
export function dropRefused(env: RoomEnv, refused: readonly { key: Key; tier: number }[]): void {
  const { index, feed } = env;
  const removed: Key[] = [];
  for (const { key, tier } of refused) {
    const e = index.get(key);
    // A lease taken meanwhile keeps it (pinned blocks are never evicted).
    if (!e || e.slots[tier] === ABSENT || e.pins > 0 || e.busy !== 0) continue;
    index.remove(key, tier);
    if (!index.get(key)) removed.push(key);
  }
  if (removed.length > 0) feed.changed([], removed);
}
