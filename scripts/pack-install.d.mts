import type { SpawnSyncReturns } from 'node:child_process';

export const NO_COMPILER: Record<string, string>;
export function sh(
  cmd: string,
  args: string[],
  cwd: string,
  env?: NodeJS.ProcessEnv,
): SpawnSyncReturns<string>;
export function pack(dir: string, dest: string): string;
export function packAndInstall(
  repo: string,
  tmp: string,
): { tarball: string; app: string; installed: string };
