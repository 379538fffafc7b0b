/**
 * The peer client's entry module (lib/index.ts and the cluster import it from here); the client
 * itself is split by concern under client/.
 */
export {
  connect,
  connectOptions,
  PeerClient,
  type ConnectOptions,
  type PeerCallOptions,
  type PeerGetResult,
  type PeerLookupResult,
  type PeerPutOptions,
  type PeerPutResult,
} from './client/index.js';
export { tenantStats } from './client/tenant-stats.js';
