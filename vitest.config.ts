import { defineConfig } from 'vitest/config';

/**
 * Suites that run the built daemon or CLI (dist/). Only these wait for the build; every other
 * suite runs straight from the TypeScript sources, so `npx vitest run test/authz/decide.test.ts`
 * takes seconds. test/support/built.ts fails a suite that needs dist/ but is not listed here.
 */
const DAEMON_SUITES = ['test/e2e/**/*.test.ts', 'test/fuzz/rpc-*.test.ts', 'test/store/embedded-process.test.ts', 'test/packaging/deb.test.ts'];

export default defineConfig({
  test: {
    // Suites start real daemons and backends: run files in parallel on the 2 cores, tests inside serially.
    pool: 'forks',
    maxWorkers: 2,
    hookTimeout: 120_000,
    projects: [
      {
        extends: true,
        test: { name: 'unit', include: ['test/**/*.test.ts'], exclude: DAEMON_SUITES, testTimeout: 60_000 },
      },
      {
        extends: true,
        // End-to-end suites drive a real daemon, CLI processes and backends: on a loaded 2-core
        // machine one test can take minutes, so their budget is generous (they wait on conditions).
        test: { name: 'daemon', include: DAEMON_SUITES, globalSetup: ['test/support/global-setup.ts'], testTimeout: 180_000 },
      },
    ],
  },
});
