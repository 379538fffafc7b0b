/**
 * A view of a Warehouse for the peer server that times its gets and puts, for
 * `kvtier serve --metrics`. The server is handed this view instead of the Warehouse, so the
 * library's hot path is unchanged and nothing is timed when metrics are off.
 *
 * What counts as one operation is one batch of a request as the server hands it to the
 * Warehouse: a get is a `lend` (blocks lent out of host-tier slots, the rest read into a buffer
 * inside it, and the answer handed to the transport before the lend returns); a put is a `put`
 * (bytes copied in), a `land` (bytes that landed straight in claimed slots) or the `commit` of a
 * reservation (a two-step put whose bytes were placed in reserved slots). A `get` outside a lend
 * is not timed: the server only calls it inside one, and timing both would count a request
 * twice. The same methods are timed on `warehouse.hostSlots`, where they are moving.
 */
import type { Warehouse } from '../../index.js';

/** What the view needs of a reservation (kept structural: the type is not exported). */
interface Reservation {
  readonly slots: unknown;
  commit(checksums?: ArrayLike<number>): Promise<unknown>;
  abort(): void;
}

export type OperationObserver = (op: 'get' | 'put', seconds: number) => void;

const TIMED: Readonly<Record<string, 'get' | 'put'>> = { lend: 'get', put: 'put', land: 'put' };

function seconds(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** `reservation` with its commit timed as a put. */
function timedReservation(
  reservation: Reservation | undefined,
  observe: OperationObserver,
): Reservation | undefined {
  if (!reservation) return reservation;
  return {
    get slots() {
      return reservation.slots;
    },
    commit: async (checksums) => {
      const start = process.hrtime.bigint();
      try {
        return await reservation.commit(checksums);
      } finally {
        observe('put', seconds(start));
      }
    },
    abort: () => reservation.abort(),
  };
}

/**
 * A proxy of `target` whose methods run on `target` itself (so its own fields and getters are
 * read directly), with the timed ones wrapped; `nested` names properties proxied the same way.
 */
function timedView<T extends object>(target: T, observe: OperationObserver, nested: string[]): T {
  const made = new Map<PropertyKey, unknown>();
  return new Proxy(target, {
    get(t, prop) {
      if (made.has(prop)) return made.get(prop);
      const value: unknown = Reflect.get(t, prop, t);
      let out: unknown;
      if (typeof prop === 'string' && nested.includes(prop) && value && typeof value === 'object') {
        out = timedView(value, observe, []);
      } else if (typeof value === 'function') {
        const fn = value as (...args: unknown[]) => unknown;
        const op = typeof prop === 'string' ? TIMED[prop] : undefined;
        if (op !== undefined) {
          out = async (...args: unknown[]) => {
            const start = process.hrtime.bigint();
            try {
              return await fn.apply(t, args);
            } finally {
              observe(op, seconds(start));
            }
          };
        } else if (prop === 'reserve') {
          out = async (...args: unknown[]) =>
            timedReservation((await fn.apply(t, args)) as Reservation | undefined, observe);
        } else {
          out = fn.bind(t);
        }
      } else {
        return value; // plain data (blockBytes) and getters are read afresh each time
      }
      made.set(prop, out);
      return out;
    },
  });
}

export function timedWarehouse(warehouse: Warehouse, observe: OperationObserver): Warehouse {
  return timedView(warehouse, observe, ['hostSlots']);
}

/** A tenant's view of the warehouse (serve --tenants), timed the same way. */
export function timedTenantView<T extends object>(view: T, observe: OperationObserver): T {
  return timedView(view, observe, ['hostSlots']);
}
