/**
 * How much of `kvtier bench net`'s working set a peer holds. The peer protocol does not say how
 * many blocks a server holds (docs/protocol.md: neither the handshake nor any request carries a
 * capacity), so the benchmark finds out by doing, untimed, what a timed pass will do: it stores
 * the get set and one put pass, asking (LOOKUP) as it goes whether every block of its own is
 * still there. A peer that evicts one of them is too small for the passes asked for; how many
 * it held at that moment is what the passes are then sized to, or what the refusal names.
 */
import { KvtierError, type PeerClient, type Region } from '../../index.js';
import { formatSize } from '../sizes.js';

/** Largest get set: the get working set stays this size however long the passes are. */
export const GET_SET_BYTES = 256 << 20;
/** Share of what the peer held that fitted passes may use: its landing slots and other clients'
 * blocks come and go, and a pass must not be the one that finds the edge. */
const FIT_SHARE = 0.75;

export interface PassSizes {
  /** Blocks of the get working set (stored once, read by every get pass). */
  distinct: number;
  /** Operations (blocks) per timed pass; a put pass's blocks are all held until it ends. */
  ops: number;
}

export function passSizes(bytes: number, blockSize: number, inflight: number): PassSizes {
  return {
    ops: Math.max(inflight, Math.floor(bytes / blockSize)),
    distinct: Math.max(inflight, Math.floor(Math.min(bytes, GET_SET_BYTES) / blockSize)),
  };
}

/**
 * Stores `getKeys`, then `putKeys`, `inflight` blocks a request (the bytes of `buffers`), and
 * checks every so often that all stored so far are present. Stops at the first block missing.
 * Deletes the put keys again (the get set stays when everything fitted, and goes otherwise).
 * Resolves with whether everything fitted and how many of the blocks the peer held at once.
 */
export async function checkRoom(
  client: PeerClient,
  getKeys: string[],
  putKeys: string[],
  inflight: number,
  buffers: Region,
): Promise<{ fits: boolean; held: number }> {
  const all = [...getKeys, ...putKeys];
  // About 32 checks in all, each a LOOKUP of what is stored so far: metadata only.
  const step = Math.max(64, Math.ceil(all.length / 32));
  let stored = 0;
  let held = all.length;
  let fits = true;
  const check = async (): Promise<void> => {
    const present = (await client.lookup(all.slice(0, stored))).present.filter(Boolean).length;
    if (present < stored) {
      fits = false;
      held = present;
    }
  };
  try {
    while (fits && stored < all.length) {
      const part = all.slice(stored, stored + inflight);
      const r = await client.put(part, buffers);
      if (r.stored + r.present !== part.length) {
        // The peer refused some: count what it still holds of everything sent (earlier blocks may
        // have been evicted to make room), so the --bytes suggested really fits.
        stored += part.length;
        await check();
        fits = false;
        held = Math.min(held, stored);
        break;
      }
      stored += part.length;
      if (stored % step < part.length || stored === all.length) await check();
    }
  } finally {
    await remove(client, fits ? putKeys : all);
  }
  return { fits, held };
}

async function remove(client: PeerClient, keys: string[]): Promise<void> {
  for (let i = 0; i < keys.length; i += 256) await client.delete(keys.slice(i, i + 256));
}

/** Passes that fit in `held` blocks with room to spare, or undefined when none would be useful. */
export function fittedSizes(
  held: number,
  blockSize: number,
  inflight: number,
): PassSizes | undefined {
  const budget = Math.floor(held * FIT_SHARE);
  const cap = Math.floor(GET_SET_BYTES / blockSize);
  const sizes = budget >= 2 * cap ? { distinct: cap, ops: budget - cap } : { distinct: 0, ops: 0 };
  if (sizes.ops === 0) sizes.distinct = sizes.ops = Math.floor(budget / 2);
  return sizes.distinct >= 2 * inflight ? sizes : undefined;
}

/** The refusal when the peer cannot hold the passes asked for: it names what to pass. */
export function noRoom(
  peer: string,
  held: number,
  want: PassSizes,
  blockSize: number,
  inflight: number,
): KvtierError {
  const fit = fittedSizes(held, blockSize, inflight);
  const advice = fit
    ? `pass --bytes ${formatSize(fit.ops * blockSize)} (or less)`
    : `it is too small for this benchmark at --block-size ${formatSize(blockSize)} and --inflight ${inflight}`;
  return new KvtierError(
    'KVTIER_BAD_ARGUMENT',
    `the peer at ${peer} held only ${held} blocks of ${blockSize} bytes (${formatSize(held * blockSize)}) ` +
      `of the ${want.distinct + want.ops} the passes need at once (a get set of ` +
      `${formatSize(want.distinct * blockSize)} and a put pass of ${formatSize(want.ops * blockSize)}); ` +
      `nothing was measured; ${advice}`,
  );
}
