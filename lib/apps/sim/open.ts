/** Opens a trace by path, detecting its format unless told. */
import { open as openFile, stat } from 'node:fs/promises';
import { createGunzip } from 'node:zlib';
import { createReadStream } from 'node:fs';

import { KvtierError } from '../../index.js';
import { JsonlTrace } from './jsonl.js';
import { KvCacheTesterTrace } from './kvcache-tester.js';
import { traceFormats, type Trace, type TraceFormat, type TraceReadOptions } from './trace.js';

async function head(path: string, bytes: number): Promise<string> {
  if (path.endsWith('.gz')) {
    const stream = createReadStream(path).pipe(createGunzip());
    let text = '';
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        text += chunk.toString('utf8');
        if (text.length >= bytes) break;
      }
    } catch {
      // A damaged file: detect from what was read; the reader reports the damage.
    } finally {
      stream.destroy();
    }
    return text.slice(0, bytes);
  }
  const fh = await openFile(path, 'r');
  try {
    const buf = Buffer.alloc(bytes);
    const { bytesRead } = await fh.read(buf, 0, bytes, 0);
    return buf.subarray(0, bytesRead).toString('utf8');
  } finally {
    await fh.close();
  }
}

/** Guesses a file's format from its first line. */
export async function detectFormat(path: string): Promise<TraceFormat> {
  let s;
  try {
    s = await stat(path);
  } catch (e) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `cannot read trace ${path}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  if (s.isDirectory()) return 'kvcache-tester';
  if (s.size === 0) throw new KvtierError('KVTIER_BAD_ARGUMENT', `${path}: the trace is empty`);
  const text = (await head(path, 1 << 16)).trimStart();
  if (text.length === 0)
    throw new KvtierError('KVTIER_BAD_ARGUMENT', `${path}: the trace is empty`);
  const firstLine = text.split('\n', 1)[0]!;
  if (/"kvtier"\s*:\s*"trace"/.test(firstLine) || /"keys"\s*:/.test(firstLine)) return 'kvtier';
  if (/"hash_ids"\s*:/.test(firstLine) && /"timestamp"\s*:/.test(firstLine)) return 'mooncake';
  if (/"requests"\s*:/.test(text) || /"hash_id_scope"\s*:/.test(text)) return 'kvcache-tester';
  throw new KvtierError(
    'KVTIER_BAD_ARGUMENT',
    `${path}: unknown trace format (expected one of ${traceFormats.join(', ')}; name it with --format)`,
  );
}

export async function openTrace(
  path: string,
  format: TraceFormat | 'auto' = 'auto',
  options: TraceReadOptions = {},
): Promise<Trace> {
  if (format !== 'auto' && !traceFormats.includes(format)) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `unknown trace format "${String(format)}" (known: auto, ${traceFormats.join(', ')})`,
    );
  }
  const f = format === 'auto' ? await detectFormat(path) : format;
  if (f === 'kvcache-tester') {
    const t = new KvCacheTesterTrace(path, options);
    try {
      await stat(path);
    } catch (e) {
      throw new KvtierError(
        'KVTIER_BAD_ARGUMENT',
        `cannot read trace ${path}: ${(e as Error).message}`,
      );
    }
    return t;
  }
  try {
    await stat(path);
  } catch (e) {
    throw new KvtierError(
      'KVTIER_BAD_ARGUMENT',
      `cannot read trace ${path}: ${(e as Error).message}`,
    );
  }
  return new JsonlTrace(f, path, options);
}
