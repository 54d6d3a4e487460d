// The build guard: only suites in vitest.config.ts's daemon project get dist/ built by the
// global setup, so a suite that runs dist/ from the unit project fails here, naming the fix,
// instead of running a stale or missing build.
import { inject } from 'vitest';

declare module 'vitest' {
  export interface ProvidedContext {
    /** Set by test/support/global-setup.ts once `tsc -p tsconfig.build.json` has run for this test run. */
    distBuilt: boolean;
  }
}

/** Set by a bench script (outside vitest) once it has built dist/ itself. */
export const DIST_BUILT_ENV = 'DEBVISOR_DIST_BUILT';

/** Throws unless this test run built dist/ (the suite is in the daemon project). */
export function requireBuiltDist(): void {
  if (process.env[DIST_BUILT_ENV] === '1') return;
  if (!inject('distBuilt')) {
    throw new Error('this suite runs the built daemon or CLI (dist/): add its path to DAEMON_SUITES in vitest.config.ts');
  }
}
