/** How `kvtier bench file` shows its results: a table for people, JSON for machines. */
import Table from 'cli-table3';

import type { FileBenchReport, FileBenchRow } from './file-bench.js';
import { formatSize } from '../sizes.js';

/** The report as JSON: `rows` first, then the context needed to trust them. */
export function fileBenchJson(report: FileBenchReport): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

function gb(v: number): string {
  return v.toFixed(2);
}

/** The report as a table with the notes a reader needs to weigh the ratios. */
export function formatFileBench(report: FileBenchReport): string {
  const out: string[] = [];
  out.push(
    `kvtier bench file: ${formatSize(report.file.size)} in ${report.file.dir}, queue depth ` +
      `${report.queueDepth}, median of ${report.reps} run(s), O_DIRECT ${report.file.direct ? 'on' : 'off'}`,
  );
  out.push(
    `machine: ${report.machine.cpus} cpus, linux ${report.machine.kernel}, node ${report.machine.node}` +
      (report.fio ? `, ${report.fio.version}` : ''),
  );
  const table = new Table({
    head: [
      'op',
      'pattern',
      'engine',
      'block',
      'kvtier GB/s',
      'fio GB/s',
      'vs fio',
      'node-fs GB/s',
      'vs node-fs',
    ],
    colAligns: ['left', 'left', 'left', 'right', 'right', 'right', 'right', 'right', 'right'],
    style: { head: [], border: [] },
    chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' },
  });
  // One line per kvtier measurement, its peers side by side (JSON has one row per peer).
  const lines = new Map<string, { cells: string[]; fio?: FileBenchRow; nodeFs?: FileBenchRow }>();
  const key = (r: { op: string; pattern: string; engine: string; blockSize: number }): string =>
    `${r.op} ${r.pattern} ${r.engine} ${r.blockSize}`;
  for (const r of report.kvtier) {
    lines.set(key(r), { cells: [r.op, r.pattern, r.engine, formatSize(r.blockSize), gb(r.gbps)] });
  }
  for (const r of report.rows) {
    const line = lines.get(key(r));
    if (!line) continue;
    if (r.peer === 'fio') line.fio = r;
    else line.nodeFs = r;
  }
  const peerCells = (r: FileBenchRow | undefined): string[] =>
    r ? [gb(r.peerGbps), `${r.ratio.toFixed(2)}x`] : ['-', '-'];
  for (const line of lines.values()) {
    table.push([...line.cells, ...peerCells(line.fio), ...peerCells(line.nodeFs)]);
  }
  out.push(table.toString());
  const notes: string[] = [];
  if (report.fio) {
    notes.push(
      'fio: same file, O_DIRECT, same block size; io_uring rows: ioengine=io_uring ' +
        'iodepth=QD; threads rows: ioengine=psync with numjobs=QD threads' +
        (report.fio.mem === 'default'
          ? "; fio's buffers are its default (malloc, 4 KiB pages), kvtier's a Region"
          : `; fio --mem=${report.fio.mem}`),
    );
  }
  const shortest = Math.min(...report.runs.filter((r) => r.tool === 'fio').map((r) => r.ms));
  if (shortest < 200) {
    notes.push(
      `the shortest fio pass took ${shortest} ms and fio reports whole milliseconds: ` +
        'use a larger --size for ratios worth reading',
    );
  }
  if (report.fioMissing !== undefined) notes.push(`no fio rows: ${report.fioMissing}`);
  if (report.nodeFs) notes.push(`node-fs: ${report.nodeFs.note}`);
  for (const s of report.skippedEngines ?? []) notes.push(`${s.engine} skipped: ${s.reason}`);
  notes.push('GB/s = 1e9 bytes per second; ratio = kvtier / peer');
  out.push(...notes.map((n) => `  ${n}`));
  return `${out.join('\n')}\n`;
}
