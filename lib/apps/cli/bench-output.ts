/** What every bench command shares around its run: `--plot FILE` and the progress line. */
import { checkPlotFile, writeChart, type Chart } from '../plot.js';
import { ProgressLine } from '../progress.js';

export interface BenchOutputOptions {
  json?: boolean;
  plot?: string;
}

/** `--plot FILE` for a bench command: `.option(...PLOT_OPTION)`. */
export const PLOT_OPTION = [
  '--plot <file>',
  'also draw the table as a chart (.svg or .png)',
] as const;

/**
 * Checks what a bench will write before it runs (a bad --plot extension is refused before any
 * pass is timed) and returns the progress line it shows on a terminal.
 */
export function startBench(opts: BenchOutputOptions): ProgressLine {
  if (opts.plot !== undefined) checkPlotFile(opts.plot);
  return new ProgressLine({ json: opts.json });
}

/** Clears the progress line, prints the report (JSON or a table) and draws it if asked. */
export async function finishBench<R>(
  opts: BenchOutputOptions,
  progress: ProgressLine,
  report: R,
  how: { json: (r: R) => string; table: (r: R) => string; chart: (r: R) => Chart },
): Promise<void> {
  progress.clear();
  process.stdout.write(opts.json ? how.json(report) : how.table(report));
  if (opts.plot !== undefined) await writeChart(how.chart(report), opts.plot);
}
