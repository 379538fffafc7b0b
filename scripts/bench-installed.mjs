#!/usr/bin/env node
// The same benchmarks from the installed tarball (prebuilt addon) and from this checkout's build,
// alternating in one run: `kvtier bench file` (kvtier's own engines, no fio) and
// `kvtier bench warehouse` (put/get only). Reports each row's median GB/s from both and the ratio
// installed / checkout, in bench/results/installed-<date>.json. Run after `npm run build:ts`.
//   ROUNDS (default 3), SIZE (default 256MiB)
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { NO_COMPILER, packAndInstall, sh } from './pack-install.mjs';

const repo = fileURLToPath(new URL('..', import.meta.url));
const rounds = Number(process.env.ROUNDS ?? 3);
const size = process.env.SIZE ?? '256MiB';
const tmp = mkdtempSync(join(tmpdir(), 'kvtier-installed-'));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const BENCHES = {
  file: ['bench', 'file', '--no-fio', '--no-node-fs', '--size', size, '--reps', '1', '--json'],
  warehouse: [
    'bench',
    'warehouse',
    '--no-chain-keys',
    '--no-lookup',
    '--size',
    size,
    '--reps',
    '1',
    '--json',
  ],
};

/** Row name → GB/s of one run. */
function figures(bench, report) {
  const out = {};
  if (bench === 'file') {
    for (const r of report.kvtier) out[`${r.op} ${r.pattern} ${r.engine} ${r.blockSize}`] = r.gbps;
  } else {
    for (const r of report.rows) out[`${r.op} ${r.blockSize}`] = r.gbps;
  }
  return out;
}

try {
  process.stderr.write('packing and installing the tarball (prebuilt addon, no compiler)...\n');
  const { app, installed } = packAndInstall(repo, tmp);
  const info = JSON.parse(
    sh('npx', ['--no-install', 'kvtier', 'info', '--json'], app, NO_COMPILER).stdout,
  );
  const sides = {
    checkout: {
      cmd: process.execPath,
      pre: [join(repo, 'dist', 'apps', 'cli', 'main.js')],
      cwd: repo,
    },
    installed: {
      cmd: process.execPath,
      pre: [join(installed, 'dist', 'apps', 'cli', 'main.js')],
      cwd: app,
    },
  };
  const samples = {}; // bench → side → row → [gbps]
  for (let round = 0; round < rounds; round++) {
    for (const [bench, args] of Object.entries(BENCHES)) {
      const order = round % 2 ? ['installed', 'checkout'] : ['checkout', 'installed'];
      for (const side of order) {
        const s = sides[side];
        process.stderr.write(`round ${round + 1}/${rounds}: ${bench} from the ${side}\n`);
        const report = JSON.parse(sh(s.cmd, [...s.pre, ...args], s.cwd).stdout);
        for (const [row, gbps] of Object.entries(figures(bench, report))) {
          ((samples[bench] ??= {})[side] ??= {})[row] ??= [];
          samples[bench][side][row].push(gbps);
        }
      }
    }
  }
  const rows = [];
  for (const [bench, bySide] of Object.entries(samples)) {
    for (const row of Object.keys(bySide.checkout)) {
      const checkout = median(bySide.checkout[row]);
      const inst = median(bySide.installed[row] ?? [NaN]);
      rows.push({
        bench,
        row,
        checkoutGbps: checkout,
        installedGbps: inst,
        ratio: inst / checkout,
      });
    }
  }
  const out = {
    kind: 'installed-vs-checkout',
    date: new Date().toISOString(),
    rounds,
    size,
    installedAddon: info.addon,
    rows,
    minRatio: Math.min(...rows.map((r) => r.ratio)),
    medianRatio: median(rows.map((r) => r.ratio)),
    samples,
  };
  const file = join(repo, 'bench', 'results', `installed-${out.date.slice(0, 10)}.json`);
  mkdirSync(join(repo, 'bench', 'results'), { recursive: true });
  writeFileSync(file, `${JSON.stringify(out, null, 2)}\n`);
  for (const r of rows) {
    process.stdout.write(
      `${r.bench.padEnd(10)} ${r.row.padEnd(32)} checkout ${r.checkoutGbps.toFixed(2)}  installed ${r.installedGbps.toFixed(2)} GB/s  ratio ${r.ratio.toFixed(3)}\n`,
    );
  }
  process.stdout.write(
    `median ratio ${out.medianRatio.toFixed(3)}, lowest ${out.minRatio.toFixed(3)}; ${file}\n`,
  );
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
