// decodeSlotHeaders: the native decoding of the file tier's header table (docs/format.md), which
// fuzz/slot_header.cc fuzzes. Every input in the fuzz corpus runs here too.
import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

import { native } from '../../lib/core/native.js';

const EMPTY = 0;
const VALID = 1;
const TORN = 2;
const BAD = 3;
const HEADER = 512;
const BS = 4096;

function header(
  fields: { keyLength?: number; length?: bigint; generation?: bigint; magic?: string } = {},
): Buffer {
  const h = Buffer.alloc(HEADER);
  h.write(fields.magic ?? 'KVTBLK01', 0, 'latin1');
  const keyLength = fields.keyLength ?? 32;
  h.writeUInt32LE(keyLength, 8);
  for (let i = 0; i < Math.min(keyLength, 32); i++) h[16 + i] = 0xa0 + i;
  h.writeBigUInt64LE(fields.length ?? BigInt(BS), 48);
  h.writeUInt32LE(0x12345678, 56);
  h.writeBigUInt64LE(fields.generation ?? 9n, 64);
  h.writeUInt32LE(native().crc32c(h.subarray(0, 72)), 72);
  return h;
}

describe('decodeSlotHeaders', () => {
  it('decodes valid headers with every field, and tells empty, torn and bad ones apart', () => {
    const torn = header();
    torn.writeUInt8(torn.readUInt8(20) ^ 1, 20); // a field changed after the CRC was computed
    const table = Buffer.concat([
      header(),
      Buffer.alloc(HEADER),
      torn,
      header({ length: BigInt(BS / 2) }),
      header({ keyLength: 40 }),
      header({ keyLength: 15 }),
      header({ generation: 2n ** 53n }),
      header({ keyLength: 16, generation: 2n ** 53n - 1n }),
      header({ magic: 'KVTBLK02' }),
    ]);
    const h = native().decodeSlotHeaders(table, HEADER, BS);
    expect([...h.status]).toEqual([VALID, EMPTY, TORN, BAD, BAD, BAD, BAD, VALID, EMPTY]);
    expect(h.keyLength[0]).toBe(32);
    expect(h.keys.subarray(0, 32).equals(table.subarray(16, 48))).toBe(true);
    expect(h.length[0]).toBe(BS);
    expect(h.checksum[0]).toBe(0x12345678);
    expect(h.generation[0]).toBe(9);
    expect(h.keyLength[7]).toBe(16);
    expect(h.keys.subarray(7 * 32, 7 * 32 + 16).equals(table.subarray(7 * HEADER + 16, 7 * HEADER + 32))).toBe(true);
    expect(h.generation[7]).toBe(2 ** 53 - 1);
  });

  it('decodes only whole headers, from any offset of a view', () => {
    const table = Buffer.concat([Buffer.alloc(7), header(), header(), Buffer.alloc(100)]);
    const view = new Uint8Array(table.buffer, table.byteOffset + 7, 2 * HEADER + 100);
    const h = native().decodeSlotHeaders(view, HEADER, BS);
    expect([...h.status]).toEqual([VALID, VALID]);
    expect(native().decodeSlotHeaders(new Uint8Array(HEADER - 1), HEADER, BS).status).toHaveLength(0);
  });

  it.each([
    ['a Buffer-less value', () => native().decodeSlotHeaders([1, 2] as unknown as Uint8Array, HEADER, BS)],
    ['a Float64Array', () => native().decodeSlotHeaders(new Float64Array(64) as unknown as Uint8Array, HEADER, BS)],
    ['headers shorter than their fields', () => native().decodeSlotHeaders(new Uint8Array(512), 75, BS)],
    ['a fractional header size', () => native().decodeSlotHeaders(new Uint8Array(512), 511.5, BS)],
    ['a negative block size', () => native().decodeSlotHeaders(new Uint8Array(512), HEADER, -1)],
    ['a block size past 2^53', () => native().decodeSlotHeaders(new Uint8Array(512), HEADER, 2 ** 60)],
  ])('refuses %s with KVTIER_BAD_ARGUMENT', (_, call) => {
    expect(call).toThrow(expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }));
  });

  // The fuzz target's input: a mode byte, 12 bits of header size past 64, a block size pick, then
  // the table (fuzz/slot_header.cc). Regression inputs of crashes found land in the same folder.
  const corpus = fileURLToPath(new URL('../../fuzz/corpus/slot_header/', import.meta.url));
  const expected: Record<string, number[]> = {
    'valid-one': [VALID],
    'valid-run': [VALID, VALID, EMPTY, VALID],
    'empty-slots': [EMPTY, EMPTY, EMPTY],
    torn: [TORN],
    'bad-length': [BAD],
    'bad-key-length': [BAD, BAD],
    'bad-generation': [BAD],
    'no-magic': [EMPTY],
    'partial-trailing-header': [VALID],
  };
  it.each(readdirSync(corpus).sort())('decodes fuzz corpus input %s', (name) => {
    const input = readFileSync(`${corpus}${name}`);
    if (input.length < 5) return;
    const headerBytes = 64 + (input[1]! | ((input[2]! & 0x0f) << 8));
    const table = input.subarray(4);
    if (headerBytes < 76) {
      expect(() => native().decodeSlotHeaders(table, headerBytes, BS)).toThrow(
        expect.objectContaining({ code: 'KVTIER_BAD_ARGUMENT' }),
      );
      return;
    }
    const h = native().decodeSlotHeaders(table, headerBytes, BS);
    expect(h.status).toHaveLength(Math.floor(table.length / headerBytes));
    for (const s of h.status) expect([EMPTY, VALID, TORN, BAD]).toContain(s);
    if (expected[name]) expect([...h.status]).toEqual(expected[name]);
  });
});
