#!/usr/bin/env node
// Writes the seed corpus of fuzz/slot_header.cc into fuzz/corpus/slot_header/: small header
// tables, valid and damaged, in the target's input format (mode, geometry, then the table).
// Run it again after changing the format; the files are committed.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const out = join(dirname(fileURLToPath(import.meta.url)), 'corpus', 'slot_header');
mkdirSync(out, { recursive: true });

// CRC-32C (Castagnoli), reflected, as native/common/crc32c.cc computes it.
const table = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32c(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = table[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const HEADER = 512;
// The target reads header_bytes as 64 + 12 bits and picks block_bytes from a table: 2 is 4096.
const geometry = (mode, headerBytes, pick) => {
  const h = headerBytes - 64;
  return Buffer.from([mode, h & 0xff, (h >> 8) & 0x0f, pick]);
};

function header({ keyLength = 32, length = 4096, generation = 1, crc = true, magic = 'KVTBLK01' }) {
  const h = Buffer.alloc(HEADER);
  h.write(magic, 0, 'latin1');
  h.writeUInt32LE(keyLength, 8);
  for (let i = 0; i < Math.min(keyLength, 32); i++) h[16 + i] = (i * 37 + generation) & 0xff;
  h.writeBigUInt64LE(BigInt(length), 48);
  h.writeUInt32LE(0xdeadbeef, 56);
  h.writeBigUInt64LE(BigInt(generation), 64);
  if (crc) h.writeUInt32LE(crc32c(h.subarray(0, 72)), 72);
  return h;
}

const seeds = {
  'valid-one': [geometry(0, HEADER, 2), header({})],
  'valid-run': [
    geometry(0, HEADER, 2),
    header({ generation: 1 }),
    header({ keyLength: 16, generation: 7 }),
    Buffer.alloc(HEADER),
    header({ generation: 3 }),
  ],
  'empty-slots': [geometry(0, HEADER, 2), Buffer.alloc(3 * HEADER)],
  torn: [geometry(0, HEADER, 2), header({ crc: false })],
  'bad-length': [geometry(0, HEADER, 2), header({ length: 2048 })],
  'bad-key-length': [geometry(0, HEADER, 2), header({ keyLength: 40 }), header({ keyLength: 15 })],
  'bad-generation': [geometry(0, HEADER, 2), header({ generation: 2 ** 53 })],
  'no-magic': [geometry(0, HEADER, 2), header({ magic: 'KVTBLK02' })],
  'partial-trailing-header': [geometry(0, HEADER, 2), header({}), header({}).subarray(0, 100)],
  'fix-crc-4096': [geometry(1, 4096, 7), header({}), Buffer.alloc(4096 - HEADER)],
  'header-too-small': [geometry(0, 64, 2), header({}).subarray(0, 200)],
};
for (const [name, parts] of Object.entries(seeds))
  writeFileSync(join(out, name), Buffer.concat(parts));
console.log(`${Object.keys(seeds).length} seeds in ${out}`);
