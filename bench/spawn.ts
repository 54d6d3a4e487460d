// Bench processes: a TypeScript file of bench/ in a fresh node process, and the load
// generator (bench/loadgen.ts) run that way, so the client's CPU is not the server's.
import { execFileSync, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { REPO_ROOT } from '../test/support/daemon.js';
import type { LoadResult, LoadSpec } from './loadgen.js';

/**
 * Runs a TypeScript file of bench/ in a fresh node process and returns its stdout lines as
 * they come: through tsx, or with `plain` on node's own type stripping (no loader hooks in
 * the process: for the bare server, which is measured like the daemon's `node dist/main.js`),
 * with `nodeFlags` before the script (the bare server gets the daemon's own V8 flags).
 */
export function spawnTs(file: string, arg: string, env: NodeJS.ProcessEnv = process.env, plain = false, nodeFlags: readonly string[] = []) {
  const child = spawn(process.execPath, [...nodeFlags, ...(plain ? [] : ['--import', 'tsx']), join(REPO_ROOT, 'bench', file), arg], {
    cwd: REPO_ROOT,
    env,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const firstLine = async (): Promise<string> => {
    const next = await lines.next();
    if (next.done === true) throw new Error(`${file} exited without output`);
    return next.value;
  };
  return { child, firstLine };
}

/** One run of bench/loadgen.ts in its own process (pinned to CPU 1 with BENCH_PIN). */
export async function loadInProcess(spec: LoadSpec): Promise<LoadResult> {
  const { child, firstLine } = spawnTs('loadgen.ts', JSON.stringify(spec));
  if (process.env.BENCH_PIN) execFileSync('taskset', ['-a', '-p', '-c', '1', String(child.pid)], { stdio: 'ignore' });
  const line = await firstLine();
  await new Promise((resolve) => child.once('close', resolve));
  return JSON.parse(line) as LoadResult;
}
