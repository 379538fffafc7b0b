/** `kvtier bench <path>`: measure a data path next to the obvious peer, in the same run. */
import type { Command } from 'commander';

export function registerBench(program: Command): void {
  program.command('bench').description('measure a kvtier data path next to its obvious peer');
}
