export { EngineChannel, type EngineChannelOptions } from './server.js';
export { EngineClient, HostPoolFile, type EngineClientOptions } from './client.js';
export { MAX_FRAME_BYTES } from './frames.js';
export type { SaveStatus } from './put-status.js';
