/** The demo's progress: requests done, hit rate and bytes moved after a bar (apps/progress.ts). */
import { ProgressBar, type ProgressChoice } from '../progress.js';
import type { DemoProgress } from './runner.js';

export class DemoProgressBar {
  private readonly bar: ProgressBar;

  constructor(choice: ProgressChoice = {}) {
    this.bar = new ProgressBar({ ...choice, width: 28 });
  }

  get on(): boolean {
    return this.bar.on;
  }

  update(p: DemoProgress): void {
    const rate = p.seconds > 0 ? p.bytesMoved / p.seconds / 1e9 : 0;
    this.bar.update(
      p.done,
      p.total,
      `${String(p.done).padStart(String(p.total).length)}/${p.total} requests` +
        `  hit ${(p.hitRate * 100).toFixed(1)}%  ${(p.bytesMoved / 1e9).toFixed(2)} GB  ${rate.toFixed(2)} GB/s`,
    );
  }

  clear(): void {
    this.bar.clear();
  }
}
