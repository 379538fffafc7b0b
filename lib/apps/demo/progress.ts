/** A one-line progress bar on a TTY stream, redrawn at most every 100 ms. */
import type { DemoProgress } from './runner.js';

export class ProgressBar {
  private last = 0;
  private shown = false;

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {}

  update(p: DemoProgress): void {
    const now = Date.now();
    if (now - this.last < 100 && p.done < p.total) return;
    this.last = now;
    const f = p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    const width = 28;
    const filled = Math.round(f * width);
    const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
    const rate = p.seconds > 0 ? p.bytesMoved / p.seconds / 1e9 : 0;
    const line =
      `${bar} ${String(p.done).padStart(String(p.total).length)}/${p.total} requests` +
      `  hit ${(p.hitRate * 100).toFixed(1)}%  ${(p.bytesMoved / 1e9).toFixed(2)} GB  ${rate.toFixed(2)} GB/s`;
    this.stream.write(`\r\x1b[K${line.slice(0, (this.stream.columns || 100) - 1)}`);
    this.shown = true;
  }

  clear(): void {
    if (this.shown) this.stream.write('\r\x1b[K');
    this.shown = false;
  }
}
