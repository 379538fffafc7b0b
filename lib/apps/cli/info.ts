/** `kvtier info`: what kvtier found on this machine and, for each missing piece, why. */
import type { Command } from 'commander';

import { probe, type ProbeReport } from '../../index.js';

function line(name: string, c: { available: boolean; reason?: string }, detail: string): string {
  const mark = c.available ? 'yes' : 'no ';
  return `  ${name.padEnd(10)} ${mark}  ${c.available ? detail : (c.reason ?? '')}`;
}

export function formatInfo(r: ProbeReport): string {
  const out: string[] = [];
  out.push(`kvtier ${r.version}  (node ${r.platform.node}, ${r.platform.arch})`);
  out.push(
    line(
      'addon',
      r.addon,
      `${r.addon.version ?? ''} ${r.addon.prebuilt ? 'prebuilt' : 'local build'} ${r.addon.path ?? ''}`,
    ),
  );
  if (r.addon.localBuildReason) out.push(`  ${''.padEnd(10)} (${r.addon.localBuildReason})`);
  out.push(`  ${'cpus'.padEnd(10)} ${r.platform.cpus}, page size ${r.platform.pageSize ?? '?'} B`);
  out.push(line('io_uring', r.ioUring, `liburing ${r.ioUring.liburingVersion ?? ''}`.trim()));
  out.push(
    line(
      'O_DIRECT',
      r.oDirect,
      `on ${r.oDirect.dir} (memory align ${r.oDirect.memAlign}, offset align ${r.oDirect.offsetAlign})`,
    ),
  );
  const devices = r.cuda.devices ?? [];
  out.push(
    line(
      'cuda',
      r.cuda,
      `driver ${r.cuda.version ?? '?'}, ${devices.length} device(s): ${devices.map((d) => d.name).join(', ')}`,
    ),
  );
  out.push(
    line(
      'cufile',
      r.cufile,
      `${r.cufile.version ?? ''} mode ${r.cufile.mode ?? '?'} (${r.cufile.modeReason ?? ''})`,
    ),
  );
  out.push(
    `  ${'gpu files'.padEnd(10)} ${r.gpuFile.io === 'cufile' ? 'cuFile' : 'posix '}  ${r.gpuFile.reason}`,
  );
  const verbs = r.ibverbs.devices ?? [];
  out.push(line('ibverbs', r.ibverbs, verbs.map((d) => `${d.name} (${d.transport})`).join(', ')));
  return out.join('\n');
}

export function registerInfo(program: Command): void {
  program
    .command('info')
    .description('report what kvtier can use on this machine, and why not where it cannot')
    .option('--json', 'print the report as JSON')
    .option('--dir <dir>', 'directory to test O_DIRECT in (default: the OS temp dir)')
    .action((opts: { json?: boolean; dir?: string }) => {
      const report = probe(opts.dir === undefined ? {} : { dir: opts.dir });
      process.stdout.write(
        opts.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatInfo(report)}\n`,
      );
    });
}
