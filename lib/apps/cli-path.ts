import { join } from 'node:path';
import { packageRoot } from '../internal.js';

/**
 * The built CLI, also when a caller runs from lib/ (tests): benchmarks start `kvtier serve` as a
 * separate process, so they need the compiled entry, not this source tree.
 */
export const cliPath = join(packageRoot, 'dist', 'apps', 'cli', 'main.js');
