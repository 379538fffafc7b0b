/**
 * Progress for the long commands (sim, demo, every bench), drawn on one line of stderr. The rule
 * lives here and only here: progress shows on a terminal, never with --json (a machine reads
 * that run) and never when stderr is a pipe or a file (a log would fill with carriage returns).
 */

/** The part of a stream progress needs; process.stderr in the CLI, a fake in tests. */
export interface ProgressStream {
  isTTY?: boolean;
  columns?: number;
  write(text: string): unknown;
}

export interface ProgressChoice {
  /** The command prints JSON. */
  json?: boolean | undefined;
  /** `--no-progress` where a command has it (commander sets `progress: false`). */
  progress?: boolean | undefined;
  stream?: ProgressStream | undefined;
}

/** Whether progress shows: on a terminal, without --json, not turned off. */
export function showsProgress(choice: ProgressChoice = {}): boolean {
  const stream = choice.stream ?? process.stderr;
  return choice.json !== true && choice.progress !== false && stream.isTTY === true;
}

const CLEAR = '\r\x1b[K';
/** Redraws at most this often: a terminal redrawn per block slows the run it reports on. */
const REDRAW_MS = 100;

/** The lines on the terminal now: an error printed mid-run clears them first. */
const showing = new Set<ProgressLine>();

/** Clears whatever progress line is showing (before the CLI prints an error). */
export function clearProgress(): void {
  for (const line of [...showing]) line.clear();
}

/** One line of status text, replaced by each message and cleared before the result prints. */
export class ProgressLine {
  private shown = false;
  private readonly stream: ProgressStream;
  readonly on: boolean;

  constructor(choice: ProgressChoice = {}) {
    this.stream = choice.stream ?? process.stderr;
    this.on = showsProgress(choice);
  }

  show(message: string): void {
    if (!this.on) return;
    this.stream.write(`${CLEAR}${message.slice(0, (this.stream.columns || 80) - 1)}`);
    this.shown = true;
    showing.add(this);
  }

  /** Removes the line, so that what prints next starts on a clean line. */
  clear(): void {
    if (this.shown) this.stream.write(CLEAR);
    this.shown = false;
    showing.delete(this);
  }

  /** Prints a line that stays (a notice), above the progress line. */
  note(text: string): void {
    this.clear();
    this.stream.write(`${text}\n`);
  }
}

/** A bar of `width` cells, `fraction` (0..1) of them filled. */
export function bar(fraction: number, width: number): string {
  const filled = Math.round(Math.min(1, Math.max(0, fraction)) * width);
  return '█'.repeat(filled) + '░'.repeat(width - filled);
}

/** A bar with a label in front and text after it, redrawn at most every 100 ms. */
export class ProgressBar {
  private last = 0;
  private readonly line: ProgressLine;
  private readonly label: string | undefined;
  private readonly width: number;

  constructor(choice: ProgressChoice & { label?: string; width?: number } = {}) {
    this.line = new ProgressLine(choice);
    this.label = choice.label;
    this.width = choice.width ?? 30;
  }

  get on(): boolean {
    return this.line.on;
  }

  /** `done` of `total`; `text` follows the bar (default: the percentage). */
  update(done: number, total: number, text?: string): void {
    if (!this.line.on) return;
    const now = Date.now();
    if (now - this.last < REDRAW_MS && done < total) return;
    this.last = now;
    const f = total > 0 ? Math.min(1, done / total) : 0;
    const after = text ?? `${(f * 100).toFixed(0).padStart(3)}%`;
    const before = this.label === undefined ? '' : `${this.label.padEnd(18)} `;
    this.line.show(`${before}${bar(f, this.width)} ${after}`);
  }

  clear(): void {
    this.line.clear();
  }
}
