/**
 * `kvtier sim --codec`: what a codec at rest is worth on a trace. The tiers keep their bytes; the
 * encoded ones (by default every tier below host memory) hold blockBytes / encodedBytes times more
 * blocks, encodedBytes being what BlockCodec says for the model's layout at the trace's block
 * tokens. One replay per codec, same policy and trace, so the rows differ only by capacity.
 *
 * Timed replays price a load from an encoded tier as its stored bytes at the tier's bandwidth,
 * then the decode of the whole block at the measured one-core decode GB/s (one after the other:
 * a bound, no overlap of read and decode). Encoding happens on the write-back path and is not on
 * any request's TTFT; it is not priced.
 */
import { formatBytes } from '../sizes.js';
import { readFileSync } from 'node:fs';

import { KvtierError } from '../../index.js';
import { BlockCodec, CODEC_NAMES, type CodecName } from '../../internal.js';
import type { CapacitySpec } from './capacity.js';
import { simulate, type SimResult, type SimTier, type TraceStats } from './replay.js';
import { simulateTimed, type TierRate, type TimedResult } from './timed.js';
import type { Trace } from './trace.js';

export type SimCodec = 'none' | CodecName;

/** What a codec needs of a layout (core/codec.ts's CodecLayout). */
export interface SimLayout {
  dtype: 'bf16' | 'fp16';
  numLayers: number;
  blockTokens: number;
  kvHeads: number;
  headDim: number;
}
export const SIM_CODECS: readonly SimCodec[] = ['none', ...CODEC_NAMES];

/** The KV layout of each model `kvtier sim --model` knows (bf16 KV, as served). */
export const modelLayouts: Record<string, Omit<SimLayout, 'blockTokens'>> = {
  'llama3-8b': { dtype: 'bf16', numLayers: 32, kvHeads: 8, headDim: 128 },
  'llama3-70b': { dtype: 'bf16', numLayers: 80, kvHeads: 8, headDim: 128 },
  'mistral-7b': { dtype: 'bf16', numLayers: 32, kvHeads: 8, headDim: 128 },
  'qwen2.5-7b': { dtype: 'bf16', numLayers: 28, kvHeads: 4, headDim: 128 },
};

/** Tiers kept in full precision unless --codec-tiers names them (the example). */
const FULL_PRECISION = new Set(['gpu', 'host']);

function bad(message: string): never {
  throw new KvtierError('KVTIER_BAD_ARGUMENT', message);
}

function names(text: string, what: string): string[] {
  const parts = text.split(',').map((s) => s.trim());
  if (parts.some((p) => p.length === 0)) bad(`--${what} ${text}: an empty name in the list`);
  const seen = new Set<string>();
  for (const p of parts) {
    if (seen.has(p)) bad(`--${what} ${text}: ${p} given twice`);
    seen.add(p);
  }
  return parts;
}

/** `none,fp8-e4m3,kivi2` → codec names, in order. */
export function parseCodecList(text: string): SimCodec[] {
  const list = names(text, 'codec');
  for (const c of list) {
    if (!(SIM_CODECS as readonly string[]).includes(c)) {
      bad(`--codec ${c}: expected a list of ${SIM_CODECS.join(', ')}`);
    }
  }
  return list as SimCodec[];
}

/** Which tiers a codec applies to: those named, or every tier not named gpu or host. */
export function encodedTiers(tiers: readonly { name: string }[], text?: string): boolean[] {
  if (text === undefined) {
    const out = tiers.map((t) => !FULL_PRECISION.has(t.name));
    if (!out.some(Boolean)) {
      bad('--codec: every tier is gpu or host memory; name the encoded ones with --codec-tiers');
    }
    return out;
  }
  const list = names(text, 'codec-tiers');
  for (const n of list) {
    if (!tiers.some((t) => t.name === n)) {
      bad(`--codec-tiers ${n}: no such tier (tiers: ${tiers.map((t) => t.name).join(', ')})`);
    }
  }
  return tiers.map((t) => list.includes(t.name));
}

export interface CodecSize {
  codec: SimCodec;
  blockBytes: number;
  /** Bytes of one encoded block, header included (blockBytes for 'none'). */
  encodedBytes: number;
  /** encodedBytes / blockBytes. */
  ratio: number;
}

/** Bytes per block of each codec for a layout (BlockCodec's own sizes, default options). */
export function codecSizes(codecs: readonly SimCodec[], layout: SimLayout): CodecSize[] {
  const blockBytes =
    2 * layout.numLayers * layout.blockTokens * layout.kvHeads * layout.headDim * 2;
  return codecs.map((codec) => {
    if (codec === 'none') return { codec, blockBytes, encodedBytes: blockBytes, ratio: 1 };
    const c = BlockCodec.open({ codec }, layout);
    if (c.decodedBytes !== blockBytes) {
      throw new KvtierError('KVTIER_BAD_ARGUMENT', `layout gives ${c.decodedBytes} B per block`);
    }
    return { codec, blockBytes, encodedBytes: c.encodedBytes, ratio: c.ratio };
  });
}

/**
 * Block capacities with a codec: an encoded tier keeps the bytes its spec gave (a block count or
 * a share of distinct blocks is counted in full-size blocks) and holds floor(bytes / encoded).
 */
export function scaleCapacities(
  tiers: readonly SimTier[],
  specs: readonly CapacitySpec[],
  encoded: readonly boolean[],
  size: CodecSize,
): SimTier[] {
  return tiers.map((t, i) => {
    if (!encoded[i]) return { ...t };
    const spec = specs[i]!;
    const bytes = spec.kind === 'bytes' ? spec.value : t.capacity * size.blockBytes;
    return { name: t.name, capacity: Math.max(1, Math.floor(bytes / size.encodedBytes)) };
  });
}

/**
 * One-core decode GB/s per codec when none are given: kvtier's own measurement on the 2-core
 * x86-64 build host, AVX2 path (bench/results/codec-2026-12-03b.json, every other process paused).
 * Built in, so a checkout and an installed package price decode the same; a host of your own is
 * better measured with `kvtier bench codec --json` and passed with --decode-rates.
 */
export const DEFAULT_DECODE_GBPS: Readonly<Record<CodecName, number>> = {
  'fp8-e4m3': 16.0,
  int8: 13.6,
  kivi4: 8.25,
  kivi2: 8.58,
};

/** One-core decode GB/s per codec from a `kvtier bench codec --json` report. */
export function readDecodeRates(path: string): Partial<Record<SimCodec, number>> {
  let report: { bench?: string; speed?: { codec: string; decodeGBps: number }[] };
  try {
    report = JSON.parse(readFileSync(path, 'utf8')) as typeof report;
  } catch (e) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `cannot read decode rates from ${path}`, {
      cause: e,
    });
  }
  if (report.bench !== 'codec' || !Array.isArray(report.speed)) {
    bad(`${path}: not a kvtier bench codec report`);
  }
  const out: Partial<Record<SimCodec, number>> = {};
  for (const row of report.speed) {
    // The bench's row names: 'int8 (K/channel, V/token)' is int8's default scales.
    const name = row.codec === 'int8 (K/channel, V/token)' ? 'int8' : row.codec;
    if ((CODEC_NAMES as readonly string[]).includes(name) && row.decodeGBps > 0) {
      out[name as CodecName] = row.decodeGBps;
    }
  }
  return out;
}

/** `fp8-e4m3=7.8,kivi2=0.8` over the rates read from a file. */
export function parseDecodeRates(
  text: string | undefined,
  base: Partial<Record<SimCodec, number>>,
): Partial<Record<SimCodec, number>> {
  const out = { ...base };
  if (text === undefined) return out;
  for (const part of text.split(',')) {
    const m = /^\s*([a-z0-9-]+)=([0-9.eE+]+)\s*$/.exec(part);
    const gbps = m ? Number(m[2]) : NaN;
    if (!m || !(CODEC_NAMES as readonly string[]).includes(m[1]!) || !(gbps > 0)) {
      bad(`--decode-gbps ${part}: expected codec=GB/s, e.g. fp8-e4m3=7.8`);
    }
    out[m[1] as CodecName] = gbps;
  }
  return out;
}

export interface CodecTierRow {
  name: string;
  encoded: boolean;
  capacity: number;
  /** Bytes the tier holds at capacity (blocks × stored bytes per block). */
  capacityBytes: number;
}

export interface CodecSimRow {
  codec: SimCodec;
  encodedBytes: number;
  ratio: number;
  /** Decode GB/s used to price loads (timed only; undefined for 'none'). */
  decodeGBps?: number;
  tiers: CodecTierRow[];
  /** Untimed replays. */
  sim?: SimResult;
  /** Bytes read from and written to the encoded tiers (stored form), untimed replays. */
  encodedBytesRead?: number;
  encodedBytesWritten?: number;
  timed?: TimedResult;
}

export interface CodecSimResult {
  kind: 'codec';
  model: string;
  blockTokens: number;
  blockBytes: number;
  policy: string;
  rows: CodecSimRow[];
}

export interface CodecSimOptions {
  trace: Trace;
  stats: TraceStats;
  tiers: SimTier[];
  specs: CapacitySpec[];
  codecs: SimCodec[];
  encoded: boolean[];
  model: string;
  blockTokens: number;
  policy: string;
  sessions?: boolean;
  hints: 'none' | 'soon' | 'closed' | 'both';
  /** Timed replays: per-tier rates, prefill rate and decode rates. */
  timed?: {
    rates: TierRate[];
    prefillTokensPerSecond: number;
    decodeGBps: Partial<Record<SimCodec, number>>;
  };
  onProgress?: (codec: number, requests: number) => void;
}

export async function simulateCodecs(o: CodecSimOptions): Promise<CodecSimResult> {
  const base = modelLayouts[o.model];
  if (!base) bad(`--codec: no KV layout known for model ${o.model}`);
  const sizes = codecSizes(o.codecs, { ...base, blockTokens: o.blockTokens });
  const blockBytes = sizes[0]!.blockBytes;
  if (o.timed) {
    for (const s of sizes) {
      if (s.codec !== 'none' && !(o.timed.decodeGBps[s.codec]! > 0)) {
        bad(`--codec ${s.codec}: no decode rate (give --decode-gbps ${s.codec}=GB/s)`);
      }
    }
  }
  const rows: CodecSimRow[] = [];
  for (const [ci, size] of sizes.entries()) {
    const tiers = scaleCapacities(o.tiers, o.specs, o.encoded, size);
    const tierRows = tiers.map((t, i) => ({
      name: t.name,
      encoded: o.encoded[i]!,
      capacity: t.capacity,
      capacityBytes: t.capacity * (o.encoded[i] ? size.encodedBytes : blockBytes),
    }));
    const row: CodecSimRow = {
      codec: size.codec,
      encodedBytes: size.encodedBytes,
      ratio: size.ratio,
      tiers: tierRows,
    };
    const common = {
      tiers,
      policy: o.policy,
      blockTokens: o.blockTokens,
      stats: o.stats,
      ...(o.sessions ? { sessions: true } : {}),
      hints: o.hints,
      onProgress: (n: number) => o.onProgress?.(ci, n),
    };
    if (o.timed) {
      const decode = size.codec === 'none' ? undefined : o.timed.decodeGBps[size.codec]!;
      if (decode !== undefined) row.decodeGBps = decode;
      row.timed = await simulateTimed(o.trace, {
        ...common,
        rates: o.timed.rates,
        bytesPerToken: blockBytes / o.blockTokens,
        prefillTokensPerSecond: o.timed.prefillTokensPerSecond,
        codecs: o.encoded.map((e) =>
          e && decode !== undefined ? { ratio: size.ratio, decodeGBps: decode } : undefined,
        ),
      });
    } else {
      const sim = await simulate(o.trace, { ...common, blockBytes });
      row.sim = sim;
      let read = 0;
      let written = 0;
      sim.tiers.forEach((t, i) => {
        if (!o.encoded[i]) return;
        // Every block found in a tier is read back (placement promotes it to the top); blocks
        // arrive by demotion from above or, for the top tier, by insertion.
        read += t.hits.any * size.encodedBytes;
        written += (i === 0 ? t.inserts : t.demotions) * size.encodedBytes;
      });
      row.encodedBytesRead = read;
      row.encodedBytesWritten = written;
    }
    rows.push(row);
  }
  return {
    kind: 'codec',
    model: o.model,
    blockTokens: o.blockTokens,
    blockBytes,
    policy: o.policy,
    rows,
  };
}

const pct = (x: number): string => `${(x * 100).toFixed(2)}%`;
const ms = (x: number): string => (x < 10 ? x.toFixed(2) : x < 100 ? x.toFixed(1) : x.toFixed(0));

/** A markdown table, one row per codec (the README takes it as printed). */
export function formatCodecSim(r: CodecSimResult): string {
  const first = r.rows[0]!;
  const enc = first.tiers.filter((t) => t.encoded).map((t) => t.name);
  const tierHead = first.tiers.map((t) => `${t.name}${t.encoded ? '*' : ''} blocks`);
  const timed = first.timed !== undefined;
  const head = [
    'codec',
    'bytes/block',
    'ratio',
    ...tierHead,
    ...(timed
      ? [
          'decode GB/s',
          'found tokens',
          'TTFT p50 ms',
          'TTFT p90 ms',
          'TTFT mean ms',
          `${enc.join('+')} read`,
        ]
      : ['prefix hit rate', 'any hit rate', `${enc.join('+')} read`, `${enc.join('+')} written`]),
  ];
  const lines = [
    `${r.model} KV (bf16), ${r.blockTokens}-token blocks of ${r.blockBytes.toLocaleString('en-US')} B; policy ${r.policy}; * = encoded tier (same bytes, more blocks)`,
    '',
    `| ${head.join(' | ')} |`,
    `| --- | ${head
      .slice(1)
      .map(() => '---:')
      .join(' | ')} |`,
  ];
  for (const row of r.rows) {
    const cells = [
      row.codec,
      row.encodedBytes.toLocaleString('en-US'),
      row.ratio.toFixed(3),
      ...row.tiers.map((t) => t.capacity.toLocaleString('en-US')),
    ];
    if (row.timed) {
      const t = row.timed;
      const read = t.loadedBytes.reduce((a, b, i) => a + (row.tiers[i]!.encoded ? b : 0), 0);
      cells.push(
        row.decodeGBps === undefined ? '—' : row.decodeGBps.toFixed(2),
        pct(t.hitRate.warehouse),
        ms(t.ttft.warehouse.p50),
        ms(t.ttft.warehouse.p90),
        ms(t.ttft.warehouse.mean),
        formatBytes(read),
      );
    } else if (row.sim) {
      cells.push(
        pct(row.sim.hitRate.prefix),
        pct(row.sim.hitRate.any),
        formatBytes(row.encodedBytesRead ?? 0),
        formatBytes(row.encodedBytesWritten ?? 0),
      );
    }
    lines.push(`| ${cells.join(' | ')} |`);
  }
  if (timed) {
    lines.push(
      '',
      'TTFT = load (stored bytes at the tier rate, then decode of the full block at the one-core decode rate) + prefill of the tokens not found; no overlap, no queueing.',
    );
  }
  return `${lines.join('\n')}\n`;
}
