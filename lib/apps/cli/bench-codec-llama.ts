/** `kvtier bench codec --llama`: the codecs' accuracy on KV that node-llama-cpp produced. */
import { cpus } from 'node:os';

import { KvtierError } from '../../index.js';
import {
  CODEC_LLAMA_DEFAULTS,
  codecLlamaJson,
  formatCodecLlama,
  runCodecLlama,
} from '../bench/codec-llama.js';
import { ProgressLine } from '../progress.js';
import { parseCount } from '../sizes.js';

export interface CodecLlamaRaw {
  tokens: string;
  group: string;
  queries: string;
  llamaTokens: string;
  json?: boolean;
  plot?: string;
}

export async function runCodecLlamaCommand(raw: CodecLlamaRaw): Promise<void> {
  if (raw.plot !== undefined) {
    throw new KvtierError('KVTIER_BAD_ARGUMENT', '--llama draws no chart (--plot)');
  }
  const progress = new ProgressLine({ json: raw.json });
  const report = await runCodecLlama({
    ...CODEC_LLAMA_DEFAULTS,
    tokens: parseCount(raw.llamaTokens, 'llama tokens', 1),
    blockTokens: parseCount(raw.tokens, 'tokens', 1),
    group: parseCount(raw.group, 'group', 1),
    queries: parseCount(raw.queries, 'queries', 1),
    threads: Math.min(CODEC_LLAMA_DEFAULTS.threads, cpus().length),
    onProgress: (m) => progress.show(m),
  });
  progress.clear();
  process.stdout.write(raw.json ? codecLlamaJson(report) : formatCodecLlama(report));
}
