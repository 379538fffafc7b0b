#!/usr/bin/env node
/**
 * The kvtier command line. Errors print their message and code, no stack, and exit non-zero.
 */
import { Command, CommanderError } from 'commander';

import { KvtierError } from '../../index.js';
import { version } from '../../internal.js';
import { clearProgress } from '../progress.js';
import { registerBench } from './bench.js';
import { registerCluster } from './cluster.js';
import { registerDemo } from './demo.js';
import { registerInfo } from './info.js';
import { registerServe } from './serve.js';
import { registerSim } from './sim.js';
import { registerTenants } from './tenants.js';

const program = new Command()
  .name('kvtier')
  .description('kvtier: a token warehouse for LLM inference (tiered KV-cache block storage)')
  .version(version)
  .showHelpAfterError()
  .exitOverride();

registerInfo(program);
registerDemo(program);
registerBench(program);
registerSim(program);
registerServe(program);
registerCluster(program);
registerTenants(program);

function fail(e: unknown): never {
  if (e instanceof CommanderError) process.exit(e.exitCode);
  clearProgress();
  if (e instanceof KvtierError) {
    process.stderr.write(`kvtier: ${e.message} [${e.code}]\n`);
  } else {
    process.stderr.write(`kvtier: ${(e as Error)?.message ?? String(e)}\n`);
  }
  process.exit(1);
}

try {
  await program.parseAsync(process.argv);
} catch (e) {
  fail(e);
}
