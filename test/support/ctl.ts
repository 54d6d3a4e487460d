// Runs the built debvisorctl (dist/cli/debvisorctl.js) against a test daemon, with the
// daemon's admin certificate from the environment, as an operator would.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { requireBuiltDist } from './built.js';
import { daemonEnv, REPO_ROOT, type RunningDaemon } from './daemon.js';

export const CTL = join(REPO_ROOT, 'dist', 'cli', 'debvisorctl.js');

export interface CtlResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** A debvisorctl process still running: its output so far, and its result once it exits. */
export interface CtlProcess {
  /** What it has printed to stdout so far. */
  stdout(): string;
  /** Its exit code and output (never rejects). */
  readonly done: Promise<CtlResult>;
}

/** Starts debvisorctl with `args` against `target`, for tests that watch its output mid-flight. */
export function ctlProcess(target: RunningDaemon, ...args: string[]): CtlProcess {
  requireBuiltDist();
  const env = daemonEnv({
    DEBVISORCTL_SERVER: target.grpcAddress,
    DEBVISORCTL_CA: target.pki.caCert,
    DEBVISORCTL_CERT: target.pki.adminCert,
    DEBVISORCTL_KEY: target.pki.adminKey,
  });
  let seen = '';
  let child: ReturnType<typeof execFile> | undefined;
  const done = new Promise<CtlResult>((resolveRun) => {
    child = execFile(process.execPath, [CTL, ...args], { cwd: REPO_ROOT, env, timeout: 120_000 }, (err, stdout, stderr) => {
      resolveRun({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
  child?.stdout?.on('data', (chunk: Buffer | string) => {
    seen += chunk.toString();
  });
  return { stdout: () => seen, done };
}

/** Runs debvisorctl with `args` against `target`; resolves with its exit code and output (never rejects). */
export function ctlOn(target: RunningDaemon, ...args: string[]): Promise<CtlResult> {
  return ctlProcess(target, ...args).done;
}
