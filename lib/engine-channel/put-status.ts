/**
 * Per-key outcome of a save, as the engine channel reports it: exactly the Warehouse's per-key
 * put status (docs/engine-channel.md, "save and load").
 */
import type { PutStatus } from '../warehouse/warehouse.js';

export type SaveStatus = PutStatus;
