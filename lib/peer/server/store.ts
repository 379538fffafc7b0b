/**
 * What a connection's requests are served from: the Warehouse itself, or, on a server with
 * tenants, the view of the connection's tenant (warehouse.tenant(name)), which maps every key to
 * the tenant's namespace and applies its quota. Kept structural so the server needs only these
 * methods; the host-slot paths (lending blocks in place, reserving slots for two-step puts,
 * durable puts) are used when the store offers them, and otherwise the blocks are copied.
 */
import type { Target } from '../../core/engine.js';
import type { Key } from '../../keys/keys.js';
import type { CallOptions } from '../../warehouse/calls.js';
import type { HostSlots } from '../../warehouse/host-slots.js';

/**
 * `CallOptions` everywhere: a request's session, hint and request id (RequestFlag.CALL), which a
 * tenant's view scopes to its tenant.
 */
export interface PeerStore {
  put(keys: Key[], src: Target, options?: CallOptions): Promise<{ status: readonly string[] }>;
  get(
    keys: Key[],
    dst: Target,
    options?: { remote?: boolean } & CallOptions,
  ): Promise<{ found: boolean[] }>;
  lookup(keys: Key[], options?: CallOptions): { tiers: readonly number[]; prefix: number };
  evict(keys: Key[]): Promise<{ status: readonly string[] }>;
  readonly hostSlots?: Partial<Pick<HostSlots, 'lend' | 'reserve' | 'persist' | 'persists'>>;
}

type Lend = HostSlots['lend'];

/** `store`'s lend, or one that lends nothing (every block is then read into a send region). */
export function lendOf(store: PeerStore): Lend {
  const lend = store.hostSlots?.lend;
  if (lend) return lend.bind(store.hostSlots);
  return ((keys: readonly unknown[], use: (lent: undefined[]) => Promise<unknown>, _?: unknown) =>
    use(keys.map(() => undefined))) as unknown as Lend;
}
