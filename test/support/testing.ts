// Daemons with the test-only TestingService, for operation and quota tests.
import { startDaemon, type RunningDaemon, type StartDaemonOptions } from './daemon.js';

export function startTestingDaemon(options: StartDaemonOptions = {}): Promise<RunningDaemon> {
  return startDaemon({
    ...options,
    args: ['--enable-test-service', ...(options.args ?? [])],
    env: { DEBVISOR_ALLOW_TEST_SERVICE: '1', ...(options.env ?? {}) },
  });
}
