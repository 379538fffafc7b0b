/**
 * Builds "soft verbs" (test/peer/soft-verbs.c), the stub libibverbs.so.1 test harness that moves
 * bytes between processes with process_vm_readv/writev. It is not RDMA hardware: see the header
 * of soft-verbs.c. Returns the environment a child process needs to load it, or undefined (after
 * prerequisite(), which fails in CI) when there is no C compiler or no <infiniband/verbs.h>.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { prerequisite } from '../helpers.js';

const SOURCE = fileURLToPath(new URL('./soft-verbs.c', import.meta.url));
export const VERBS_HEADER = '/usr/include/infiniband/verbs.h';

function compiler(): string | undefined {
  for (const cc of [process.env.CC ?? 'cc', 'gcc']) {
    if (spawnSync(cc, ['--version']).status === 0) return cc;
  }
  return undefined;
}

export function buildSoftVerbs(dir: string): Record<string, string> | undefined {
  const cc = compiler();
  if (!prerequisite(cc !== undefined, 'no C compiler (cc) to build the soft verbs library')) {
    return undefined;
  }
  if (
    !prerequisite(
      existsSync(VERBS_HEADER),
      `${VERBS_HEADER} missing (apt-get install libibverbs-dev)`,
    )
  ) {
    return undefined;
  }
  // Yama's scope 2 and 3 allow process_vm_readv only to privileged tracers, whatever the target
  // process allows.
  const yama = '/proc/sys/kernel/yama/ptrace_scope';
  const scope = existsSync(yama) ? Number(readFileSync(yama, 'utf8').trim()) : 0;
  if (
    !prerequisite(
      scope <= 1,
      `Yama ptrace_scope is ${scope}: processes cannot read each other`,
      'privilege',
    )
  ) {
    return undefined;
  }
  const lib = join(dir, 'lib');
  const registry = join(dir, 'registry');
  mkdirSync(lib, { recursive: true });
  mkdirSync(registry, { recursive: true });
  const r = spawnSync(
    cc!,
    ['-shared', '-fPIC', '-O1', '-Wall', '-Wextra', SOURCE, '-o', join(lib, 'libibverbs.so.1')],
    { encoding: 'utf8' },
  );
  if (r.status !== 0) throw new Error(`building soft verbs failed: ${r.stderr}`);
  return { LD_LIBRARY_PATH: lib, KVTIER_SOFT_VERBS_DIR: registry };
}
