import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Suites start real daemons and backends: run files in parallel on the 2 cores, tests inside serially.
    pool: 'forks',
    maxWorkers: 2,
  },
});
