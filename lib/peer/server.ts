/**
 * The peer server's entry module (lib/index.ts and `kvtier serve` import it from here); the
 * server itself is split by concern under server/.
 */
export {
  PeerServer,
  type LogFn,
  type PeerServerOptions,
  type ServerTenancy,
} from './server/index.js';
export type { PeerStore } from './server/store.js';
