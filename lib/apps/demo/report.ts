/** How `kvtier demo` shows what it did: a header and tables for people, JSON for machines. */
import Table from 'cli-table3';

import type { DemoResult } from './runner.js';

export interface DemoConfig {
  /** The file tier's directory. */
  dir: string;
  /** Whether the directory stays after the run (--dir), or is removed. */
  kept: boolean;
  seed: number;
  blockTokens: number;
  kvBytesPerToken: number;
  blockBytes: number;
  hostBytes: number;
  /** Why the host tier has this size. */
  hostWhy: string;
  fileBytes: number;
  fileWhy: string;
}

export interface DemoWorkloadInfo {
  requests: number;
  sessions: number;
  subagents: number;
  systemPrompts: number;
  /** Distinct blocks the workload stores (what a cache with room for everything would hold). */
  distinctBlocks: number;
  distinctBytes: number;
}

export interface DemoSummary extends DemoResult {
  config: DemoConfig;
  workload: DemoWorkloadInfo;
}

const int = (n: number): string => n.toLocaleString('en-US');
const plural = (n: number, word: string): string => `${int(n)} ${word}${n === 1 ? '' : 's'}`;
const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
const gb = (n: number): string => `${(n / 1e9).toFixed(2)} GB`;

/** 268435456 → "256 MiB", 1610612736 → "1.5 GiB". */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}

/** What the demo is about to do: shown before it starts. */
export function formatHeader(c: DemoConfig, w: DemoWorkloadInfo): string {
  const blocks = (b: number): string => `${int(Math.floor(b / c.blockBytes))} blocks`;
  const out = [
    `kvtier demo: a tiered KV-cache warehouse under a multi-turn agent workload`,
    `  block     ${c.blockTokens} tokens × ${bytes(c.kvBytesPerToken)}/token = ${bytes(c.blockBytes)}` +
      (c.kvBytesPerToken === 16 * 1024 ? '  (Llama-3.2-1B, fp8 KV)' : ''),
    `  host      ${bytes(c.hostBytes)} (${blocks(c.hostBytes)}): ${c.hostWhy}`,
    `  file      ${bytes(c.fileBytes)} (${blocks(c.fileBytes)}): ${c.fileWhy}`,
    `  dir       ${c.dir}${c.kept ? '' : ' (removed at the end; --dir DIR keeps it for a warm rerun)'}`,
    `  workload  seed ${c.seed}: ${plural(w.requests, 'request')} from ${plural(w.sessions, 'session')} ` +
      `(${plural(w.subagents, 'sub-agent')}), ${plural(w.systemPrompts, 'shared system prompt')}, ` +
      `${bytes(w.distinctBytes)} of distinct KV`,
  ];
  if (w.distinctBytes > c.fileBytes) {
    out.push(
      `  note      the workload's distinct KV exceeds the file tier: a warm rerun finds only what was not evicted`,
    );
  }
  return `${out.join('\n')}\n`;
}

const plain = {
  style: { head: [], border: [] },
  chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' },
};

export function formatSummary(s: DemoSummary): string {
  const tiers = new Table({
    head: [
      'tier',
      'capacity',
      'used',
      'served',
      'hit rate',
      'GB in',
      'GB out',
      'evictions',
      'promotions',
      'demotions',
      'corrupt',
    ],
    colAligns: ['left', ...new Array<'right'>(10).fill('right')],
    ...plain,
  });
  for (const t of s.tiers) {
    tiers.push([
      t.name,
      bytes(t.capacityBlocks * s.config.blockBytes),
      int(t.usedBlocks),
      int(t.served),
      pct(t.hitRate),
      (t.bytesIn / 1e9).toFixed(2),
      (t.bytesOut / 1e9).toFixed(2),
      int(t.evictions),
      int(t.promotions),
      int(t.demotions),
      int(t.corrupt),
    ]);
  }
  tiers.push([
    'all',
    '',
    int(s.blocksAtEnd),
    int(s.hitBlocks),
    pct(s.hitRate),
    '',
    '',
    '',
    '',
    '',
    int(s.corruptBlocks),
  ]);

  const byTier = s.tiers.map((t) => `${t.name} ${pct(t.hitRate)}`).join(', ');
  const saved = s.prefillTokens > 0 ? s.prefillTokensSaved / s.prefillTokens : 0;
  const first = s.firstRequest;
  const summary = new Table({ colAligns: ['left', 'left'], ...plain });
  summary.push(
    [
      'requests',
      `${int(s.requests)} (${plural(s.workload.sessions, 'session')}, ${plural(s.workload.subagents, 'sub-agent')})`,
    ],
    ['hit rate', `${pct(s.hitRate)} of ${int(s.promptBlocks)} prompt blocks (${byTier})`],
    [
      'GB moved',
      `${gb(s.bytesMoved)} through the tiers; ${gb(s.bytesRead)} read back, ${gb(s.bytesWritten)} computed and stored`,
    ],
    ['throughput', `${s.gbps.toFixed(2)} GB/s over ${s.seconds.toFixed(1)} s`],
    ['blocks verified', `${int(s.verifiedBlocks)}, every byte checked against its key`],
    ['corrupt blocks', `${int(s.corruptBlocks)} detected and dropped`],
    [
      'prefill tokens saved',
      `${int(s.prefillTokensSaved)} of ${int(s.prefillTokens)} (${pct(saved)}), est. at ${s.config.blockTokens} tokens per hit block`,
    ],
    [
      'warm start',
      s.warmStart
        ? `yes: ${int(s.blocksAtOpen)} blocks found on open; first request served ` +
          `${int(first?.hitBlocks ?? 0)} of ${int(first?.promptBlocks ?? 0)} prompt blocks ` +
          `(${Object.entries(first?.byTier ?? {})
            .map(([n, v]) => `${n} ${int(v)}`)
            .join(', ')})`
        : 'no: the warehouse started empty',
    ],
  );
  return `${tiers.toString()}\n${summary.toString()}\n`;
}

export function summaryJson(s: DemoSummary): string {
  return `${JSON.stringify(s, null, 2)}\n`;
}
