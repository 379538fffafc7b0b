/**
 * Reads a text file line by line as a stream, with line numbers, without building a string per
 * chunk boundary more than once. A last line without a newline is reported as such, so readers can
 * call it truncated when it does not parse.
 */
import { createReadStream } from 'node:fs';
import { createGunzip } from 'node:zlib';

export interface Line {
  text: string;
  /** 1-based. */
  number: number;
  /** The file ended without a newline after this line. */
  last: boolean;
}

export async function* readLines(path: string): AsyncGenerator<Line> {
  const raw = createReadStream(path, { highWaterMark: 1 << 20 });
  const stream = path.endsWith('.gz') ? raw.pipe(createGunzip()) : raw;
  stream.setEncoding?.('utf8');
  let rest = '';
  let number = 0;
  for await (const chunk of stream as AsyncIterable<string | Buffer>) {
    const text = rest + (typeof chunk === 'string' ? chunk : chunk.toString('utf8'));
    let start = 0;
    for (;;) {
      const nl = text.indexOf('\n', start);
      if (nl < 0) break;
      number++;
      yield { text: text.slice(start, nl), number, last: false };
      start = nl + 1;
    }
    rest = text.slice(start);
  }
  if (rest.length > 0) yield { text: rest, number: number + 1, last: true };
}
