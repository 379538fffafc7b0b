/** `kvtier bench warehouse`'s report printed: JSON, or tables with the targets beside the figures. */
import Table from 'cli-table3';

import { formatSize } from '../sizes.js';
import { KEY_TARGETS, type ChainKeysRow, type LookupRow } from './keys-bench.js';
import { IO_TARGET, type IoRow, type WarehouseBenchReport } from './warehouse-bench.js';

export function warehouseBenchJson(report: WarehouseBenchReport): string {
  return `${JSON.stringify(report, null, 2)}\n`;
}

const tableStyle = {
  style: { head: [], border: [] },
  chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' },
};

const mark = (ok: boolean): string => (ok ? 'yes' : 'NO');

/** The report as tables, one per section, with the targets beside the figures. */
export function formatWarehouseBench(report: WarehouseBenchReport): string {
  const out: string[] = [];
  const load = (l: number[] | undefined): string => (l ?? []).map((v) => v.toFixed(2)).join(' ');
  out.push(
    `kvtier bench warehouse: ${report.machine.cpus} cpus (${report.machine.cpu}), linux ` +
      `${report.machine.kernel}, node ${report.machine.node}; load ${load(report.load.start)} -> ` +
      `${load(report.load.end)}`,
  );
  const io = report.rows.filter((x): x is IoRow => x.section === 'io');
  if (io.length > 0 && report.io) {
    const s = report.io;
    out.push(
      `\nput/get through the Warehouse vs the raw ${s.engine} engine (QD ${s.queueDepth}), ` +
        `${formatSize(s.size)} per pass in ${s.dir}, ${s.batch} blocks per call, ${s.inFlight} ` +
        `call(s) in flight, median of ${s.reps}`,
    );
    const t = new Table({
      head: [
        'op',
        'block',
        'warehouse GB/s',
        'engine GB/s',
        'ratio',
        `>= ${IO_TARGET}`,
        'engine+crc GB/s',
        'ratio',
      ],
      colAligns: ['left', 'right', 'right', 'right', 'right', 'left', 'right', 'right'],
      ...tableStyle,
    });
    for (const x of io) {
      t.push([
        x.op,
        formatSize(x.blockSize),
        x.gbps.toFixed(2),
        x.peerGbps.toFixed(2),
        `${x.ratio.toFixed(3)}x`,
        mark(x.meetsTarget),
        x.crcPeerGbps.toFixed(2),
        `${x.crcRatio.toFixed(3)}x`,
      ]);
    }
    out.push(t.toString());
  }
  const ck = report.rows.filter((x): x is ChainKeysRow => x.section === 'chainKeys');
  if (ck.length > 0) {
    const first = ck[0]!;
    out.push(
      `\nchainKeys, ${first.tokens} tokens at ${first.blockTokens} per block (${first.keys} keys), ` +
        `vs a per-block createHash('sha256') loop with identical output`,
    );
    const t = new Table({
      head: [
        'variant',
        'kvtier ms',
        'createHash ms',
        'speedup',
        `<= ${KEY_TARGETS.chainKeysMs} ms`,
      ],
      colAligns: ['left', 'right', 'right', 'right', 'left'],
      ...tableStyle,
    });
    for (const x of ck) {
      t.push([
        x.variant,
        x.ms.toFixed(3),
        x.peerMs.toFixed(3),
        `${x.ratio.toFixed(2)}x`,
        mark(x.meetsTarget),
      ]);
    }
    out.push(t.toString());
  }
  const lk = report.rows.filter((x): x is LookupRow => x.section === 'lookup');
  if (lk.length > 0) {
    out.push(`\nprefix lookup of a ${lk[0]!.keys}-key chain, all cached, vs a Map.get loop`);
    const t = new Table({
      head: ['variant', 'M keys/s', 'Map M keys/s', 'ratio', '>= 5 M/s'],
      colAligns: ['left', 'right', 'right', 'right', 'left'],
      ...tableStyle,
    });
    for (const x of lk) {
      t.push([
        x.variant,
        (x.keysPerSec / 1e6).toFixed(1),
        (x.peerKeysPerSec / 1e6).toFixed(1),
        `${x.ratio.toFixed(2)}x`,
        mark(x.meetsTarget),
      ]);
    }
    out.push(t.toString());
  }
  out.push('  ratio = kvtier throughput / peer throughput; GB/s = 1e9 bytes per second');
  return `${out.join('\n')}\n`;
}
