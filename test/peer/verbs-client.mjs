// A peer client in its own process for test/peer/verbs.test.ts: the soft verbs library must be on
// the loader path from the start, so the client cannot run inside the test runner. Runs one
// scenario against `kvtier serve` and prints its findings as one line of JSON.
//
//   node verbs-client.mjs SCENARIO URL TOKEN_FILE TRANSPORT [BLOCKS]
import { existsSync, writeFileSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';

import * as kv from '../../dist/index.js';

const [scenario, url, tokenFile, transport, blocksArg] = process.argv.slice(2);
const blocks = Number(blocksArg ?? 8);

function keysOf(n, seed) {
  const tokens = new Uint32Array(n * 4).map((_, i) => i + seed * 100_003);
  return kv.chainKeys(tokens, { blockTokens: 4, namespace: `verbs-${scenario}-${seed}` }).keys();
}

/** Compares every block a get reported found with the bytes put under its key. */
function check(src, dst, found, bs) {
  let equal = 0;
  let differ = 0;
  found.forEach((f, i) => {
    if (!f) return;
    const a = src.subarray(i * bs, (i + 1) * bs);
    const b = dst.subarray(i * bs, (i + 1) * bs);
    if (Buffer.compare(a, b) === 0) equal++;
    else differ++;
  });
  return { equal, differ };
}

const out = {};
let client;
try {
  client = await kv.connect(url, { tokenFile, transport, reconnect: false });
  out.transport = client.transport;
  out.reason = client.transportReason;
  const bs = client.blockBytes;
  if (scenario === 'handshake') {
    // connect() is all this scenario checks
  } else if (scenario === 'roundtrip') {
    // Batches of `blocks` keys, all in flight at once, read back into a Region (views of it),
    // into plain Buffers, and block by block (coalesced requests).
    const batches = 6;
    const keys = [];
    const src = [];
    for (let b = 0; b < batches; b++) {
      keys.push(keysOf(blocks, b));
      src.push(randomFillSync(Buffer.allocUnsafe(blocks * bs)));
    }
    const puts = await Promise.all(keys.map((k, b) => client.put(k, src[b])));
    out.stored = puts.reduce((n, p) => n + p.stored, 0);
    const region = kv.Region.allocate(batches * blocks * bs, { pin: false });
    const views = keys.map((_, b) => region.view(b * blocks * bs, blocks * bs));
    const bufs = keys.map(() => Buffer.alloc(blocks * bs));
    const gets = await Promise.all([
      ...keys.map((k, b) => client.get(k, views[b])),
      ...keys.map((k, b) => client.get(k, bufs[b])),
    ]);
    const singles = Buffer.alloc(blocks * bs);
    const one = await Promise.all(
      keys[0].map((k, i) => client.get([k], singles.subarray(i * bs, (i + 1) * bs))),
    );
    let equal = 0;
    let differ = 0;
    let found = 0;
    keys.forEach((_, b) => {
      for (const [dst, r] of [
        [Buffer.from(views[b].buffer, views[b].byteOffset, views[b].byteLength), gets[b]],
        [bufs[b], gets[batches + b]],
      ]) {
        const c = check(src[b], dst, r.found, bs);
        equal += c.equal;
        differ += c.differ;
        found += r.count;
      }
    });
    const c = check(
      src[0],
      singles,
      one.map((r) => r.found[0]),
      bs,
    );
    equal += c.equal;
    differ += c.differ;
    found += one.filter((r) => r.found[0]).length;
    out.expected = 2 * batches * blocks + blocks;
    out.found = found;
    out.equal = equal;
    out.differ = differ;
    out.corrupt = client.corrupt;
    const missing = await client.get(keysOf(2, 999), Buffer.alloc(2 * bs));
    out.missingFound = missing.count;
    await region.close();
  } else if (scenario === 'fault') {
    // Puts, then holds the RDMA READs of the gets (KVTIER_SOFT_VERBS_HOLD) while the test kills
    // the server; reports how every get ended.
    const keys = keysOf(blocks, 1);
    const src = randomFillSync(Buffer.allocUnsafe(blocks * bs));
    out.stored = (await client.put(keys, src)).stored;
    writeFileSync(process.env.KVTIER_SOFT_VERBS_HOLD, 'hold');
    const dsts = [0, 1, 2, 3].map(() => Buffer.alloc(blocks * bs));
    const settled = await Promise.allSettled(dsts.map((d) => client.get(keys, d)));
    out.gets = settled.map((s, n) =>
      s.status === 'fulfilled'
        ? { ok: true, ...check(src, dsts[n], s.value.found, bs) }
        : { ok: false, code: s.reason.code, message: s.reason.message },
    );
    out.holdLeft = existsSync(process.env.KVTIER_SOFT_VERBS_HOLD);
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
} catch (e) {
  out.error = { code: e.code, message: e.message };
}
await client?.close().catch(() => {});
process.stdout.write(`${JSON.stringify(out)}\n`);
