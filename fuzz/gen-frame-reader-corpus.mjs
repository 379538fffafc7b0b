#!/usr/bin/env node
// Writes the seed corpus of fuzz/frame_reader.cc into fuzz/corpus/frame_reader/: small frame
// streams, valid and broken, in the target's input format (mode byte, expectation byte, then the
// bytes of the stream). Run it again after changing the format; the files are committed.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const out = join(dirname(fileURLToPath(import.meta.url)), 'corpus', 'frame_reader');
mkdirSync(out, { recursive: true });

const AUTH = 1;
const PLACE = 2;
const DIRECT = 4;

function frame(type, requestId, meta, payload = Buffer.alloc(0), declared = payload.length) {
  const h = Buffer.alloc(24);
  h.write('KVTP', 0, 'latin1');
  h.writeUInt8(type, 4);
  h.writeUInt32LE(requestId, 8);
  h.writeUInt32LE(meta.length, 12);
  h.writeBigUInt64LE(BigInt(declared), 16);
  return Buffer.concat([h, meta, payload]);
}

function keys(n) {
  const m = Buffer.alloc(8 + 40 * n);
  m.writeUInt32LE(n, 0);
  for (let i = 0; i < n; i++) {
    m.writeUInt8(32, 8 + 40 * i);
    m.fill(i + 1, 16 + 40 * i, 48 + 40 * i);
  }
  return m;
}

function results(statuses) {
  const m = Buffer.alloc(8 + 8 * statuses.length);
  m.writeUInt32LE(statuses.length, 0);
  statuses.forEach((s, i) => m.writeUInt8(s, 8 + 8 * i));
  return m;
}

const bytes = (n, seed) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

function seed(name, mode, expect, ...frames) {
  writeFileSync(join(out, name), Buffer.concat([Buffer.from([mode, expect]), ...frames]));
}

const hello = Buffer.alloc(48);
hello.writeUInt16LE(1, 0);
hello.writeUInt32LE(1, 4);
const error = Buffer.alloc(8 + 5);
error.writeUInt32LE(4, 0);
error.writeUInt32LE(5, 4);
error.write('limit', 8);

seed('hello', 0, 0, frame(0x01, 0, hello));
seed('put-two-keys', AUTH | (3 << 3), 0, frame(0x10, 1, keys(2), bytes(128, 1)));
seed('get-result-placed', AUTH | PLACE, 0x12, frame(0x13, 2, results([0, 0]), bytes(128, 2)));
seed('get-result-one-missing', AUTH | PLACE, 0x12, frame(0x13, 3, results([1, 0]), bytes(64, 3)));
seed('get-result-mismatch', AUTH | PLACE, 0x12, frame(0x13, 4, results([0, 0]), bytes(64, 4)));
seed(
  'requests-in-a-row',
  AUTH | (7 << 3),
  0,
  frame(0x14, 5, keys(3)),
  frame(0x12, 6, keys(1)),
  frame(0x16, 7, keys(2)),
  frame(0x05, 0, error),
);
seed('put-direct', AUTH | DIRECT | (1 << 3), 0, frame(0x10, 8, keys(1), bytes(4096, 5)));
seed(
  'placed-direct',
  AUTH | PLACE | DIRECT,
  0xf4,
  frame(0x13, 9, results([0, 1, 0, 0]), bytes(3 * 15 * 64, 6)),
);
seed('bad-magic', 0, 0, Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
seed('meta-too-large-before-auth', 0, 0, frame(0x01, 0, Buffer.alloc(8192)));
seed('payload-before-auth', 0, 0, frame(0x01, 0, hello, Buffer.alloc(0), 1 << 20));
seed('payload-too-large', AUTH, 0, frame(0x10, 1, keys(1), Buffer.alloc(0), 2 ** 40));
seed('truncated', AUTH, 0, frame(0x10, 1, keys(2), bytes(128, 7)).subarray(0, 100));
