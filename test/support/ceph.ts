// A private single-node Ceph for tests, started by scripts/ceph-test-start (one copy of the recipe):
// one mon on a free loopback port, one memstore OSD, no cephx, size-1 pools, everything in a temp dir.
// Ready in about 2 s; share one per test file and create a pool per test for isolation.
// Daemons are stopped by recorded PID only (scripts/ceph-test-stop), and SIGKILLed if the test
// process exits without calling stop(). Needs Debian ceph-mon, ceph-osd and ceph-common.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);
const SCRIPTS = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts');
export const CEPH_MON = '/usr/bin/ceph-mon';
export const CEPH_OSD = '/usr/bin/ceph-osd';
export const CEPH = '/usr/bin/ceph';
export const RBD = '/usr/bin/rbd';
const START_TIMEOUT_MS = 90_000;

export interface TestCeph {
  /** The cluster's ceph.conf: pass it as `--conf` / CEPH_CONF. */
  readonly conf: string;
  readonly dir: string;
  /** Creates a replicated size-1 pool and runs `rbd pool init` on it (about 0.5 s). */
  createPool(name: string): Promise<void>;
  /** Removes a pool and everything in it. */
  deletePool(name: string): Promise<void>;
  /** Stops the daemons by PID and removes the directory. Idempotent. */
  stop(): Promise<void>;
}

/** True when the Debian packages are installed (suites can skip with a clear message otherwise). */
export function cephAvailable(): boolean {
  return [CEPH_MON, CEPH_OSD, CEPH, RBD].every((path) => existsSync(path));
}

const liveDirs = new Set<string>();
let exitHookInstalled = false;

function recordedPids(dir: string): number[] {
  const run = join(dir, 'run');
  if (!existsSync(run)) return [];
  return readdirSync(run)
    .filter((f) => f.endsWith('.bgpid'))
    .map((f) => Number(readFileSync(join(run, f), 'utf8').trim()))
    .filter((pid) => Number.isInteger(pid) && pid > 0);
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // The daemons run in their own session (setsid): nothing else ends them if a test run dies.
  process.once('exit', () => {
    for (const dir of liveDirs) {
      for (const pid of recordedPids(dir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  });
}

function cephEnv(conf: string): NodeJS.ProcessEnv {
  return { CEPH_CONF: conf, PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C' };
}

export async function startCeph(options: { pools?: readonly string[] } = {}): Promise<TestCeph> {
  if (!cephAvailable()) {
    throw new Error('Ceph is not installed: apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-common');
  }
  installExitHook();
  const dir = mkdtempSync(join(tmpdir(), 'debvisor-ceph-'));
  const env = { ...process.env, CEPH_DIR: dir, CEPH_POOLS: (options.pools ?? []).join(',') };
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    await execFileAsync(join(SCRIPTS, 'ceph-test-stop'), [], { env: { ...process.env, CEPH_DIR: dir } });
    liveDirs.delete(dir);
  };
  liveDirs.add(dir);
  let conf: string;
  try {
    const { stdout } = await execFileAsync(join(SCRIPTS, 'ceph-test-start'), [], { env, timeout: START_TIMEOUT_MS });
    conf = stdout.trim();
  } catch (err) {
    const log = existsSync(join(dir, 'log', 'mon.a.log')) ? readFileSync(join(dir, 'log', 'mon.a.log'), 'utf8').slice(-4096) : '';
    await stop();
    throw new Error(`ceph-test-start failed: ${err instanceof Error ? err.message : String(err)}\n${log}`, { cause: err });
  }
  const ceph = (args: string[]) => execFileAsync(CEPH, args, { env: cephEnv(conf), timeout: 30_000 });
  return {
    conf,
    dir,
    async createPool(name) {
      await ceph(['osd', 'pool', 'create', name, '8', '8', 'replicated']);
      // `rbd pool init` writes to the pool, so it also waits for its placement groups to be active.
      await execFileAsync(RBD, ['pool', 'init', name], { env: cephEnv(conf), timeout: 30_000 });
    },
    async deletePool(name) {
      await ceph(['osd', 'pool', 'rm', name, name, '--yes-i-really-really-mean-it']);
    },
    stop,
  };
}
