/**
 * Closing a Warehouse: let the work in flight finish, write down to the file tier the blocks held
 * only in faster tiers (so a restart finds them), sync, then close tiers, sources and engines,
 * whatever failed on the way, and say which blocks were lost.
 */
import { KvtierError } from '../core/errors.js';
import type { Key } from '../keys/keys.js';
import { ABSENT } from './block-index.js';
import type { Parts } from './configure.js';
import { FLUSH_BATCH } from './host-slots.js';
import type { PlacementBatch } from './placement.js';
import type { SlotPlace } from './tier.js';
import type { CloseError } from './types.js';

export async function closeParts(parts: Parts): Promise<void> {
  let unwritten: Key[] = [];
  const errors: unknown[] = [];
  try {
    // No forecast after this: staging may only finish the block it is copying.
    parts.staging?.stop();
    parts.prefetcher.cancelQueued();
    await parts.inflight.drained();
    parts.leases.clear();
    const flushed = await flushDown(parts);
    unwritten = flushed.unwritten;
    errors.push(...flushed.errors);
    // Gathered 'later' headers are written and waited for, then the file tier synced: a block
    // whose payload is down must not lose its header because the Warehouse closed first.
    await parts.placement.syncFiles();
  } catch (e) {
    errors.push(e);
  } finally {
    await Promise.allSettled(parts.tiers.map((t) => t.close()));
    await parts.sources.close();
    await Promise.allSettled([
      parts.fileEngine.close(),
      parts.memoryEngine.close(),
      parts.gpuCopy?.close(),
    ]);
  }
  if (unwritten.length > 0 || errors.length > 0) throw closeError(unwritten, errors);
}

/**
 * Writes blocks that live only in faster tiers down to the file tier (making room there as
 * eviction would): with write-back, the hottest blocks are exactly the ones never evicted, and
 * they would otherwise be lost on every restart. Returns the keys it could not write, and why.
 */
async function flushDown(parts: Parts): Promise<{ unwritten: Key[]; errors: unknown[] }> {
  const { tiers, index, placement } = parts;
  const unwritten: Key[] = [];
  const errors: unknown[] = [];
  const last = tiers.length - 1;
  if (last === 0 || !tiers[last]!.scan) return { unwritten, errors };
  const items: { key: Key; from: SlotPlace }[] = [];
  for (const [key, e] of index) {
    if (e.slots[last] !== ABSENT) continue;
    // Whatever is not on the durable tier yet is lost at a restart: write its copy in host
    // memory where there is one (GPU copies go through host staging).
    const held = e.slots.flatMap((slot, t) => (t < last && slot !== ABSENT ? [t] : []));
    const t = held.find((x) => tiers[x]!.kind === 'host') ?? held[0];
    if (t !== undefined) items.push({ key, from: placement.place(t, e.slots[t]!) });
  }
  for (let i = 0; i < items.length; i += FLUSH_BATCH) {
    const batch = items.slice(i, i + FLUSH_BATCH);
    // One batch failing whole (a refused round) must not stop the others from being saved.
    await placement.copyTo(batch, last).then(
      (b) => errors.push(...b.errors, ...unexplained(b)),
      (e: unknown) => errors.push(e),
    );
    for (const { key } of batch) {
      if (index.get(key)?.slots[last] === ABSENT) unwritten.push(key);
    }
  }
  return { unwritten, errors };
}

/**
 * Errors for the copies of a flush batch that failed with no engine error behind them (a copy
 * that failed verification, a slot refused): close must name the real reason, not guess one.
 */
function unexplained(b: PlacementBatch): KvtierError[] {
  const out: KvtierError[] = [];
  const seen = new Set<string>();
  for (const [key, why] of b.failures()) {
    // Failures with an engine error are explained by it; a damaged copy never is.
    if (b.errors.length > 0 && !b.mismatched.has(key)) continue;
    const code = b.mismatched.has(key)
      ? 'KVTIER_CORRUPT'
      : why === 'no-space'
        ? 'KVTIER_NO_SPACE'
        : 'KVTIER_IO';
    if (seen.has(code)) continue;
    seen.add(code);
    out.push(
      new KvtierError(
        code,
        code === 'KVTIER_CORRUPT'
          ? `block ${key} failed verification on its way down (its copy is damaged)`
          : code === 'KVTIER_NO_SPACE'
            ? 'no free slot in the file tier'
            : `block ${key} could not be copied down (I/O error)`,
      ),
    );
  }
  return out;
}

function closeError(unwritten: Key[], errors: unknown[]): CloseError {
  const first = errors.find((e): e is KvtierError => e instanceof KvtierError);
  const noSpace = errors.some((e) => e instanceof KvtierError && e.code === 'KVTIER_NO_SPACE');
  const shown = unwritten.slice(0, 4).join(', ');
  const more = unwritten.length > 4 ? ` and ${unwritten.length - 4} more` : '';
  const why =
    errors.length > 0
      ? String((errors[0] as Error)?.message ?? errors[0])
      : 'no free slot in the file tier';
  const message =
    unwritten.length > 0
      ? `close could not write ${unwritten.length} block(s) down to the file tier, which are lost: ${shown}${more} (${why})`
      : `close failed part way (${why}); files are closed and the directory released`;
  const err = new KvtierError(noSpace ? 'KVTIER_NO_SPACE' : (first?.code ?? 'KVTIER_IO'), message, {
    ...(first?.errno !== undefined ? { errno: first.errno } : {}),
    ...(first?.syscall !== undefined ? { syscall: first.syscall } : {}),
    cause: errors[0],
  });
  return Object.assign(err, { unwritten });
}
