/** `kvtier demo --engine llama`: the demo's agent workload on node-llama-cpp (lib/apps/demo/llama-agent.ts). */
import { KvtierError } from '../../index.js';
import { formatLlamaAgent, runLlamaAgent } from '../demo/llama-agent.js';
import { showsProgress } from '../progress.js';

export interface DemoLlamaOptions {
  requests?: string;
  seed?: string;
  blockTokens?: string;
  maxTokens?: string;
  threads?: string;
  json?: boolean;
  progress?: boolean;
}

function whole(text: string | undefined, what: string, fallback: number, max: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || n < 1 || n > max) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `${what} must be an integer from 1 to ${max}, got '${text}'`,
    );
  }
  return n;
}

export async function demoLlama(opts: DemoLlamaOptions): Promise<void> {
  const report = await runLlamaAgent({
    requests: whole(opts.requests, 'requests', 12, 10_000),
    seed: whole(opts.seed, 'seed', 1, 0xffffffff),
    blockTokens: whole(opts.blockTokens, 'block tokens', 64, 4096),
    maxTokens: whole(opts.maxTokens, 'max tokens', 4, 256),
    threads: whole(opts.threads, 'threads', 2, 256),
    ...(showsProgress({ json: opts.json, progress: opts.progress })
      ? { onProgress: (m: string) => process.stderr.write(`  ${m}\n`) }
      : {}),
  });
  process.stdout.write(
    opts.json ? `${JSON.stringify(report, null, 2)}\n` : formatLlamaAgent(report),
  );
}
