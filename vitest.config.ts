import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Native addons and file descriptors are per process: forks isolate them, and let the ASan
    // run preload its runtime into every test process.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    reporters: process.env.CI === 'true' ? ['default', './test/summary-reporter.ts'] : ['default'],
  },
});
