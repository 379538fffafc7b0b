/**
 * `kvtier bench llama`: time to first token on a real engine (node-llama-cpp, CPU), with the
 * prompt's KV state restored through kvtier from the host tier and from the file tier, next to a
 * full prefill of the same prompt by the same model in the same run.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';

import { KvtierError } from '../../index.js';
import {
  BENCH_MODEL,
  importNodeLlamaCpp,
  kvBytesPerToken,
  LlamaKvCache,
  type LlamaModelSpec,
  writeLlamaGguf,
} from '../../llama/index.js';
import { batchMatchedNext, compareNext, type Comparison, nextAfter } from '../../internal.js';

export interface LlamaBenchOptions {
  /** Prompt lengths in tokens. */
  contexts: number[];
  blockTokens: number;
  /** Engine threads. */
  threads: number;
  /** Skip a context whose full prefill would likely take longer than this (extrapolated). */
  maxPrefillSeconds: number;
  dir?: string;
  model?: LlamaModelSpec;
  onProgress?: (message: string) => void;
}

export const LLAMA_DEFAULTS: LlamaBenchOptions = {
  contexts: [1024, 4096, 16384],
  blockTokens: 256,
  threads: 2,
  maxPrefillSeconds: 240,
};

export interface LlamaBenchRow {
  tokens: number;
  fullPrefillMs: number;
  hostRestoreTtftMs: number;
  fileRestoreTtftMs: number;
  /** Inside the restore TTFTs: the engine's load of the staged state, and the staging I/O. */
  hostLoadMs: number;
  fileLoadMs: number;
  stagingMs: number;
  restoredTokens: number;
  storeMs: number;
  stateBytes: number;
  speedupHost: number;
  speedupFile: number;
  /** The first token after each restore equals the one after full prefill. */
  sameFirstToken: boolean;
  /** Each restore's first-token distribution against full prefill's. */
  vsFullPrefill: { host: Comparison; file: Comparison };
  /**
   * Against the batch-matched reference (reference.ts): the restored tokens prefilled, the rest
   * evaluated in one call. A correct restore is bit-identical to it (maxProbDelta 0).
   */
  vsBatchMatched: { host: Comparison; file: Comparison };
  /** The batch-matched reference run a second time: the engine's own run-to-run noise. */
  referenceRerun: Comparison;
  /** Both restores bit-identical to the batch-matched reference, within referenceRerun. */
  identicalToBatchMatched: boolean;
}

export interface LlamaBenchReport {
  kind: 'llama';
  date: string;
  machine: { cpus: number; cpuModel: string; threads: number };
  engine: string;
  model: LlamaModelSpec & { bytes: number; params: number };
  blockTokens: number;
  blockBytes: number;
  bytesPerToken: number;
  staging: string;
  rows: LlamaBenchRow[];
  skipped: { tokens: number; reason: string }[];
}

function params(s: LlamaModelSpec): number {
  const kv = ((s.kvHeads ?? s.heads) * s.embd) / s.heads;
  return (
    2 * s.vocab * s.embd + s.layers * (2 * s.embd * s.embd + 2 * s.embd * kv + 3 * s.embd * s.ff)
  );
}

function promptOf(n: number, vocab: number): number[] {
  let s = 12345;
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(3 + (s % (vocab - 3)));
  }
  return out;
}

export async function runLlamaBench(options: LlamaBenchOptions): Promise<LlamaBenchReport> {
  const { contexts, blockTokens } = options;
  if (contexts.length === 0 || contexts.some((c) => !Number.isSafeInteger(c) || c < 2)) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', 'contexts must be token counts of at least 2');
  }
  const progress = options.onProgress ?? (() => undefined);
  const spec = options.model ?? BENCH_MODEL;
  const max = Math.max(...contexts);
  const work = mkdtempSync(join(options.dir ?? tmpdir(), 'kvtier-bench-llama-'));
  const { getLlama, LlamaLogLevel } = await importNodeLlamaCpp();
  const modelPath = join(work, 'bench.gguf');
  writeLlamaGguf(modelPath, { ...spec, contextLength: Math.max(spec.contextLength, max + 64) });
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath });
  const context = await model.createContext({
    contextSize: max + 64,
    sequences: 1,
    threads: options.threads,
  });
  const seq = context.getSequence();
  const report: LlamaBenchReport = {
    kind: 'llama',
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model ?? '', threads: options.threads },
    engine: 'node-llama-cpp 3.21.1, prebuilt CPU binary',
    model: { ...spec, bytes: statSync(modelPath).size, params: params(spec) },
    blockTokens,
    blockBytes: 0,
    bytesPerToken: 0,
    staging: '',
    rows: [],
    skipped: [],
  };
  let host: LlamaKvCache | undefined;
  let file: LlamaKvCache | undefined;
  try {
    const perToken = kvBytesPerToken(context);
    const bytes = Math.ceil((max * perToken * 1.25) / (1 << 20) + 8) << 20;
    host = await LlamaKvCache.open(context, { blockTokens, tiers: [{ kind: 'host', bytes }] });
    file = await LlamaKvCache.open(context, {
      blockTokens,
      tiers: [{ kind: 'file', dir: join(work, 'tier'), bytes }],
    });
    report.blockBytes = host.blockBytes;
    report.bytesPerToken = host.blockBytes / blockTokens;
    report.staging = host.stagingDir;
    const prompt = promptOf(max, spec.vocab);
    let lastMs = 0;
    let lastN = 0;
    for (const n of [...contexts].sort((a, b) => a - b)) {
      // Prefill grows a little faster than linearly; guess from the last one measured.
      const guess = lastN > 0 ? lastMs * (n / lastN) ** 1.3 : 0;
      if (guess > options.maxPrefillSeconds * 1000) {
        report.skipped.push({
          tokens: n,
          reason: `full prefill extrapolated to ${(guess / 1000).toFixed(0)} s, over the limit of ${options.maxPrefillSeconds} s`,
        });
        continue;
      }
      const p = prompt.slice(0, n);
      progress(`${n} tokens: full prefill`);
      await seq.clearHistory();
      let t = performance.now();
      // Full vocabulary probabilities cost one softmax over it: well under a millisecond here.
      const full = await nextAfter(seq, p);
      const first = full.token;
      const fullPrefillMs = performance.now() - t;
      progress(`${n} tokens: store (${(fullPrefillMs / 1000).toFixed(1)} s prefill)`);
      t = performance.now();
      await host.store(seq);
      const storeMs = performance.now() - t;
      await file.store(seq);
      const rows: { ttft: number; load: number; staging: number; restored: number; ok: boolean }[] =
        [];
      for (const kv of [host, file]) {
        progress(`${n} tokens: restore from ${kv === host ? 'host' : 'file'}`);
        await seq.clearHistory();
        const r = await kv.generate(seq, p, { maxTokens: 1, store: false });
        rows.push({
          ttft: r.ttftMs,
          load: r.restore.ms.load,
          staging: r.restore.staging.ms,
          restored: r.restore.restoredTokens,
          ok: r.tokens[0] === first,
        });
      }
      // Untimed: the distributions after each restore, then the batch-matched reference twice.
      const after = [];
      for (const kv of [host, file]) {
        await seq.clearHistory();
        const r = await kv.restore(seq, p);
        after.push({ restored: r.restoredTokens, next: await nextAfter(seq, r.rest) });
      }
      progress(`${n} tokens: batch-matched reference, twice`);
      const ref = await batchMatchedNext(seq, p, after[0]!.restored);
      const rerun = await batchMatchedNext(seq, p, after[0]!.restored);
      await seq.clearHistory();
      const referenceRerun = compareNext(ref, rerun);
      const vsBatchMatched = {
        host: compareNext(ref, after[0]!.next),
        file: compareNext(ref, after[1]!.next),
      };
      const identical =
        after[1]!.restored === after[0]!.restored &&
        [vsBatchMatched.host, vsBatchMatched.file].every(
          (c) => c.sameToken && c.maxProbDelta <= referenceRerun.maxProbDelta,
        );
      report.rows.push({
        tokens: n,
        fullPrefillMs,
        hostRestoreTtftMs: rows[0]!.ttft,
        fileRestoreTtftMs: rows[1]!.ttft,
        hostLoadMs: rows[0]!.load,
        fileLoadMs: rows[1]!.load,
        stagingMs: rows[0]!.staging,
        restoredTokens: rows[0]!.restored,
        storeMs,
        stateBytes: rows[0]!.restored * report.bytesPerToken,
        speedupHost: fullPrefillMs / rows[0]!.ttft,
        speedupFile: fullPrefillMs / rows[1]!.ttft,
        sameFirstToken: rows[0]!.ok && rows[1]!.ok,
        vsFullPrefill: {
          host: compareNext(full, after[0]!.next),
          file: compareNext(full, after[1]!.next),
        },
        vsBatchMatched,
        referenceRerun,
        identicalToBatchMatched: identical,
      });
      lastMs = fullPrefillMs;
      lastN = n;
    }
  } finally {
    await host?.close();
    await file?.close();
    await context.dispose();
    await model.dispose();
    rmSync(work, { recursive: true, force: true });
  }
  return report;
}

export function formatLlamaBench(r: LlamaBenchReport): string {
  const m = r.model;
  const lines = [
    `kvtier bench llama: ${r.engine}; model llama ${m.layers}L x ${m.embd}, ${(m.params / 1e6).toFixed(1)} M params, ${(m.bytes / 2 ** 20).toFixed(1)} MiB ${m.dtype ?? 'f16'}`,
    `machine: ${r.machine.cpus} CPUs (${r.machine.cpuModel}), ${r.machine.threads} engine threads; blocks of ${r.blockTokens} tokens, ${r.bytesPerToken} bytes per token; staging in ${r.staging}`,
    '',
    'tokens  full prefill  restore host  restore file  x host  x file  same token  identical',
  ];
  for (const row of r.rows) {
    lines.push(
      [
        String(row.tokens).padStart(6),
        `${row.fullPrefillMs.toFixed(0)} ms`.padStart(13),
        `${row.hostRestoreTtftMs.toFixed(0)} ms`.padStart(13),
        `${row.fileRestoreTtftMs.toFixed(0)} ms`.padStart(13),
        row.speedupHost.toFixed(1).padStart(7),
        row.speedupFile.toFixed(1).padStart(7),
        (row.sameFirstToken ? 'yes' : 'no').padStart(11),
        (row.identicalToBatchMatched ? 'yes' : 'NO').padStart(10),
      ].join(' '),
    );
  }
  lines.push(
    '',
    'same token: the first token after restore equals the one after full prefill, whose last batch',
    'is larger, so the engine sums in another order; identical: bit-identical probabilities to',
    'the batch-matched reference (the restored prefix prefilled, the rest evaluated in one call).',
  );
  for (const s of r.skipped) lines.push(`${s.tokens} tokens skipped: ${s.reason}`);
  return `${lines.join('\n')}\n`;
}
