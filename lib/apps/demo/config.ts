/**
 * Sizes for `kvtier demo`: the block (tokens × KV bytes per token), a host tier that fits the
 * machine's free memory, and a file tier with room for the workload within the free disk. A
 * directory given with --dir keeps its sizes in `kvtier-demo.json`, so a second run opens the
 * same file tier (a file tier refuses to be reopened with another geometry).
 */
import { readFile, rename, statfs, writeFile } from 'node:fs/promises';
import { freemem } from 'node:os';
import { join } from 'node:path';

import { KvtierError } from '../../index.js';
import { ensureDir as makeDirs, fromSystemError } from '../../internal.js';

export const CONFIG_FILE = 'kvtier-demo.json';

/** Tokens per block (vLLM's default page size). */
export const DEFAULT_BLOCK_TOKENS = 16;
/**
 * KV bytes per token: 16 KiB, Llama-3.2-1B with an fp8 KV cache (2 × 16 layers × 8 KV heads × 64
 * head dim × 1 byte), so a block is 256 KiB: real bytes, yet quick on a 2-core box. Llama-3-8B
 * in bf16 is 128 KiB per token (2 MiB blocks): `--kv-bytes-per-token 128KiB`.
 */
export const DEFAULT_KV_BYTES_PER_TOKEN = 16 * 1024;
/** The host tier takes at most this, and at most 1/16 of free memory. */
export const MAX_DEFAULT_HOST_BYTES = 256 * 2 ** 20;
/** The file tier is at least this many times the host tier... */
export const FILE_TO_HOST = 4;
/** ...with room for the workload's distinct blocks plus this margin... */
export const FILE_MARGIN = 1.25;
/** ...but takes at most this share of the free disk. */
export const MAX_DISK_SHARE = 0.5;
const MAX_BLOCK_BYTES = 2 ** 30;

export interface SavedConfig {
  blockTokens: number;
  kvBytesPerToken: number;
  blockBytes: number;
  hostBytes: number;
  fileBytes: number;
}

export interface SizeChoice {
  bytes: number;
  /** Why this size: shown on screen. */
  why: string;
}

export function checkPositiveInteger(value: number, what: string, max: number): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be an integer from 1 to ${max}, got ${value}`,
    );
  }
  return value;
}

export function blockBytesOf(blockTokens: number, kvBytesPerToken: number): number {
  const bytes = blockTokens * kvBytesPerToken;
  if (!Number.isSafeInteger(bytes) || bytes < 1 || bytes > MAX_BLOCK_BYTES) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `a block of ${blockTokens} tokens × ${kvBytesPerToken} bytes per token is ${bytes} bytes; it must be from 1 byte to 1 GiB`,
    );
  }
  return bytes;
}

const floorTo = (n: number, to: number): number => Math.floor(n / to) * to;

/** The default host tier: min(256 MiB, free memory / 16), whole blocks, at least 4 of them. */
export function defaultHostBytes(blockBytes: number, free = freemem()): SizeChoice {
  const share = Math.floor(free / 16);
  const bytes = Math.max(
    4 * blockBytes,
    floorTo(Math.min(MAX_DEFAULT_HOST_BYTES, share), blockBytes),
  );
  const why =
    share < 4 * blockBytes
      ? 'the 4-block minimum'
      : share < MAX_DEFAULT_HOST_BYTES
        ? '1/16 of free memory'
        : '256 MiB cap; 1/16 of free memory is more';
  return { bytes, why };
}

/**
 * The default file tier: 4 × host, or room for the workload's distinct blocks (plus 25%) if more,
 * capped at half the free disk.
 */
export function defaultFileBytes(
  blockBytes: number,
  hostBytes: number,
  workloadBlocks: number,
  freeDisk: number,
): SizeChoice {
  const forWorkload = Math.ceil(workloadBlocks * FILE_MARGIN) * blockBytes;
  let bytes = Math.max(FILE_TO_HOST * hostBytes, forWorkload);
  let why =
    forWorkload > FILE_TO_HOST * hostBytes
      ? 'room for the workload, +25%'
      : `${FILE_TO_HOST} × host, room for the workload`;
  const cap = floorTo(Math.floor(freeDisk * MAX_DISK_SHARE), blockBytes);
  if (bytes > cap) {
    bytes = cap;
    why = 'half the free disk';
  }
  if (bytes < blockBytes) {
    throw new KvtierError(
      'KVTIER_NO_SPACE',
      `the free disk (${freeDisk} bytes) cannot hold a file tier of even one ${blockBytes}-byte block`,
    );
  }
  return { bytes, why };
}

export async function freeDiskBytes(dir: string): Promise<number> {
  try {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  } catch (e) {
    throw new KvtierError(
      'KVTIER_IO',
      `cannot read free space of ${dir}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
}

/** The sizes an earlier run stored in `dir`, if any. */
export async function readSavedConfig(dir: string): Promise<SavedConfig | undefined> {
  const path = join(dir, CONFIG_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new KvtierError('KVTIER_IO', `cannot read ${path}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  let saved: Partial<SavedConfig>;
  try {
    saved = JSON.parse(text) as Partial<SavedConfig>;
  } catch {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${path} is not a kvtier demo record`);
  }
  for (const k of [
    'blockTokens',
    'kvBytesPerToken',
    'blockBytes',
    'hostBytes',
    'fileBytes',
  ] as const) {
    if (!Number.isSafeInteger(saved[k]) || saved[k]! < 1) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `${path} has no valid ${k}; remove it or the directory`,
      );
    }
  }
  return saved as SavedConfig;
}

export async function writeSavedConfig(dir: string, config: SavedConfig): Promise<void> {
  const path = join(dir, CONFIG_FILE);
  const tmp = `${path}.tmp`;
  try {
    await writeFile(tmp, `${JSON.stringify(config, null, 2)}\n`);
    await rename(tmp, path);
  } catch (e) {
    throw new KvtierError('KVTIER_IO', `cannot write ${path}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}

/**
 * mkdir -p for --dir, one level at a time (Node 20's recursive mkdir can loop forever on some
 * paths, e.g. under /proc), with kvtier's error codes.
 */
export async function ensureDir(dir: string): Promise<void> {
  try {
    await makeDirs(dir);
  } catch (e) {
    throw fromSystemError(e, `cannot create ${dir}`);
  }
}
