// Runs the built debvisorctl (dist/cli/debvisorctl.js) against a test daemon, with the
// daemon's admin certificate from the environment, as an operator would.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { daemonEnv, REPO_ROOT, type RunningDaemon } from './daemon.js';

export const CTL = join(REPO_ROOT, 'dist', 'cli', 'debvisorctl.js');

export interface CtlResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs debvisorctl with `args` against `target`; resolves with its exit code and output (never rejects). */
export function ctlOn(target: RunningDaemon, ...args: string[]): Promise<CtlResult> {
  const env = daemonEnv({
    DEBVISORCTL_SERVER: target.grpcAddress,
    DEBVISORCTL_CA: target.pki.caCert,
    DEBVISORCTL_CERT: target.pki.adminCert,
    DEBVISORCTL_KEY: target.pki.adminKey,
  });
  return new Promise((resolveRun) => {
    execFile(process.execPath, [CTL, ...args], { cwd: REPO_ROOT, env, timeout: 30_000 }, (err, stdout, stderr) => {
      resolveRun({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}
