// Shared by the in-process tenant tests (tenants*.test.ts): small blocks, key chains per
// namespace, and a warehouse with tenancy and a fixed secret.
import {
  chainKeys,
  Warehouse,
  type TenancyOptions,
  type TierOptions,
  type WarehouseOptions,
} from '../../lib/index.js';
import { blockFor } from '../blocks.js';

export const BS = 4096;
export const TOKENS = 4;

export function chain(n: number, namespace = 'app', offset = 0): string[] {
  const tokens = Uint32Array.from({ length: n * TOKENS }, (_, i) => i + offset);
  return chainKeys(tokens, { blockTokens: TOKENS, namespace }).keys();
}

export function hostTier(blocks: number): TierOptions[] {
  return [{ kind: 'host', bytes: blocks * BS }];
}

export async function open(
  tenancy: Partial<TenancyOptions> & Pick<TenancyOptions, 'tenants'>,
  extra: Partial<WarehouseOptions> = {},
): Promise<Warehouse> {
  return Warehouse.open({
    blockBytes: BS,
    tiers: hostTier(16),
    ...extra,
    tenancy: { blockTokens: TOKENS, secret: Buffer.alloc(32, 7), ...tenancy },
  });
}

/** Bytes of `keys` read back from `dst`, compared block by block with what was put. */
export function same(keys: readonly string[], dst: Buffer): boolean {
  return keys.every((k, i) => blockFor(k, BS).equals(dst.subarray(i * BS, (i + 1) * BS)));
}

export const count = (blocks: number) => ({ blocks, bytes: blocks * BS, tokens: blocks * TOKENS });
