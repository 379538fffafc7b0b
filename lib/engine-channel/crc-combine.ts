/**
 * CRC-32C of a concatenation from the CRCs of its pieces (zlib's crc32_combine, for the
 * Castagnoli polynomial): a block gathered or scattered in pieces gets its checksum from the
 * pieces' checksums, computed by the engine threads as each piece landed, without reading the
 * block again. The operator that appends `len` zero bytes is a 32×32 bit matrix, built once per
 * length (a layout's pieces have few distinct lengths).
 */
const POLY = 0x82f63b78;

function times(mat: Uint32Array, vec: number): number {
  let sum = 0;
  for (let i = 0; vec !== 0; i++, vec >>>= 1) if (vec & 1) sum ^= mat[i]!;
  return sum >>> 0;
}

function square(out: Uint32Array, mat: Uint32Array): void {
  for (let n = 0; n < 32; n++) out[n] = times(mat, mat[n]!);
}

const operators = new Map<number, Uint32Array>();

/** The matrix that turns crc(A) into crc(A followed by `len` zero bytes), sans the final xor. */
function operator(len: number): Uint32Array {
  let result = operators.get(len);
  if (result) return result;
  result = new Uint32Array(32);
  for (let n = 0; n < 32; n++) result[n] = (1 << n) >>> 0;
  const odd = new Uint32Array(32);
  const even = new Uint32Array(32);
  odd[0] = POLY; // one zero bit
  for (let n = 1, row = 1; n < 32; n++, row <<= 1) odd[n] = row >>> 0;
  square(even, odd); // two zero bits
  square(odd, even); // four zero bits
  const apply = (mat: Uint32Array): void => {
    const next = new Uint32Array(32);
    for (let n = 0; n < 32; n++) next[n] = times(mat, result![n]!);
    result = next;
  };
  let l = len;
  while (l > 0) {
    square(even, odd); // 1, 4, 16, ... bytes
    if (l & 1) apply(even);
    l = Math.floor(l / 2);
    if (l === 0) break;
    square(odd, even); // 2, 8, 32, ... bytes
    if (l & 1) apply(odd);
    l = Math.floor(l / 2);
  }
  operators.set(len, result);
  return result;
}

/** crc(A ‖ B) from crc(A), crc(B) and B's length. */
export function crc32cCombine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB === 0) return crcA >>> 0;
  return (times(operator(lengthB), crcA >>> 0) ^ crcB) >>> 0;
}

/** The CRC of pieces back to back, from each piece's CRC and length (in order). */
export function crc32cOfPieces(crcs: ArrayLike<number>, lengths: ArrayLike<number>): number {
  let crc = 0;
  for (let i = 0; i < crcs.length; i++) crc = crc32cCombine(crc, crcs[i]!, lengths[i]!);
  return crc;
}
