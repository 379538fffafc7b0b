// A second process for the llama tests: opens the file tier another process left, restores a
// prompt on the real engine and prints what it restored and generated, as one JSON line.
import { getLlama, LlamaLogLevel } from 'node-llama-cpp';

import { LlamaKvCache } from '../../dist/llama/index.js';

const args = JSON.parse(process.argv[2]);
const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: args.model });
const context = await model.createContext({
  contextSize: args.contextSize,
  sequences: 1,
  threads: 1,
});
const kv = await LlamaKvCache.open(context, {
  blockTokens: args.blockTokens,
  tiers: [{ kind: 'file', dir: args.dir, bytes: args.fileBytes }],
});
const sequence = context.getSequence();
const r = await kv.generate(sequence, args.prompt, { maxTokens: args.maxTokens, store: false });
console.log(
  JSON.stringify({
    restoredTokens: r.restore.restoredTokens,
    source: r.restore.source,
    tiers: r.restore.tiers,
    tokens: r.tokens,
  }),
);
await kv.close();
await context.dispose();
await model.dispose();
