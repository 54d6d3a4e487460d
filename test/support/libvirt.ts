// Starts a private, unprivileged libvirtd for tests: the test driver (as scripts/libvirt-test-start),
// or the QEMU session driver with real QEMU under TCG (as scripts/libvirt-session-start), e.g. two of
// them to live-migrate between (docs/libvirt-migration.md):
//  - its own temp dir, with HOME and XDG_* under it;
//  - as root, the daemon runs as `nobody` (a root libvirtd is "privileged" and needs Debian's libvirt-qemu user);
//  - test driver: a holder connection (`virsh event --all --loop`) keeps its state alive between virsh
//    calls, and the built-in `test` domain is removed, so the hypervisor starts empty;
//  - QEMU session: stop() destroys every running guest first (a killed session libvirtd leaves its QEMU
//    processes running).
// Processes are stopped by PID only (SIGTERM, then SIGKILL after 5 s), and SIGKILLed if the
// test process exits without calling stop(). Needs Debian libvirt-daemon and libvirt-clients.
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

export const LIBVIRTD = '/usr/sbin/libvirtd';
export const VIRSH = '/usr/bin/virsh';
const READY_TIMEOUT_MS = 10_000;
const KILL_AFTER_MS = 5_000;

export interface StartLibvirtOptions {
  /** 'test' (default): the test driver. 'qemu': qemu:///session with real QEMU (needs qemu-system-x86). */
  readonly driver?: 'test' | 'qemu';
  /** Run in this directory (created; its parent must be traversable by `nobody`) instead of a fresh temp dir. */
  readonly dir?: string;
  /** Contents of the QEMU session's qemu.conf (driver 'qemu'), e.g. `bridge_helper = "…"` (test/support/bridge.ts). */
  readonly qemuConf?: string;
}

export interface TestLibvirt {
  /** test+unix:///default?socket=<dir>/run/libvirt/libvirt-sock, or qemu+unix:///session?socket=… */
  readonly uri: string;
  readonly dir: string;
  /** PID of libvirtd while it runs. */
  readonly pid: number | undefined;
  /** Stops the holder and libvirtd by PID and removes the directory. Idempotent. */
  stop(): Promise<void>;
}

/** True when the Debian packages are installed (suites can skip with a clear message otherwise). */
export function libvirtAvailable(): boolean {
  return existsSync(LIBVIRTD) && existsSync(VIRSH);
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const child of live) if (child.pid !== undefined && child.exitCode === null) child.kill('SIGKILL');
  });
}

function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_MS);
  await exited;
  clearTimeout(timer);
}

function virshOk(uri: string, args: string[]): boolean {
  return spawnSync(VIRSH, ['-q', '-c', uri, ...args], { stdio: 'ignore', env: { LC_ALL: 'C', PATH: process.env.PATH ?? '/usr/bin:/bin' } }).status === 0;
}

export const QEMU = '/usr/bin/qemu-system-x86_64';
const VIRT_ADMIN = '/usr/bin/virt-admin';

/**
 * How many clients the libvirtd behind `adminUri` has connected to its main server (virt-admin
 * srv-clients-list). A session libvirtd's admin server takes only its own user: as root, the
 * question is asked as `nobody`, the user the libvirtd runs as.
 */
function libvirtClients(adminUri: string, asNobody: boolean): number {
  const ask = [VIRT_ADMIN, '-q', '-c', adminUri, 'srv-clients-list', 'libvirtd'];
  const [cmd, ...args] = asNobody ? ['/usr/bin/setpriv', '--reuid=nobody', '--regid=nogroup', '--clear-groups', ...ask] : ask;
  const out = spawnSync(cmd!, args, { encoding: 'utf8', env: { LC_ALL: 'C', PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  return out.status === 0 ? out.stdout.split('\n').filter((line) => /^\s*\d+\s/.test(line)).length : 0;
}

/** True when QEMU is installed too (real migration tests). */
export function qemuAvailable(): boolean {
  return libvirtAvailable() && existsSync(QEMU);
}

/** Every running guest of a libvirt (names), for clean-up. */
function runningDomains(uri: string): string[] {
  const out = spawnSync(VIRSH, ['-q', '-c', uri, 'list', '--name'], { encoding: 'utf8', env: { LC_ALL: 'C', PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  return out.status === 0 ? out.stdout.split('\n').map((l) => l.trim()).filter(Boolean) : [];
}

export async function startLibvirt(options: StartLibvirtOptions = {}): Promise<TestLibvirt> {
  if (!libvirtAvailable()) {
    throw new Error('libvirt is not installed: apt-get install -y --no-install-recommends libvirt-clients libvirt-daemon');
  }
  const driver = options.driver ?? 'test';
  if (driver === 'qemu' && !qemuAvailable()) throw new Error(`QEMU is not installed (${QEMU}): apt-get install -y --no-install-recommends qemu-system-x86`);
  installExitHook();
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), 'debvisor-libvirt-'));
  const root = process.getuid?.() === 0;
  const uid = root ? Number(execFileSync('id', ['-u', 'nobody'], { encoding: 'utf8' }).trim()) : undefined;
  const gid = root ? Number(execFileSync('id', ['-g', 'nobody'], { encoding: 'utf8' }).trim()) : undefined;
  const env = {
    HOME: join(dir, 'home'),
    XDG_RUNTIME_DIR: join(dir, 'run'),
    XDG_CONFIG_HOME: join(dir, 'config'),
    XDG_CACHE_HOME: join(dir, 'cache'),
    XDG_DATA_HOME: join(dir, 'data'),
    PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
    LC_ALL: 'C',
  };
  for (const d of [dir, env.HOME, env.XDG_RUNTIME_DIR, env.XDG_CONFIG_HOME, join(env.XDG_CONFIG_HOME, 'libvirt'), env.XDG_CACHE_HOME, env.XDG_DATA_HOME]) {
    mkdirSync(d, { recursive: true, mode: 0o700 });
    if (uid !== undefined && gid !== undefined) chownSync(d, uid, gid);
  }
  const conf = join(env.XDG_CONFIG_HOME, 'libvirt', 'libvirtd.conf');
  writeFileSync(conf, `log_outputs = "3:file:${join(dir, 'libvirtd.log')}"\n`, { mode: 0o644 });
  if (options.qemuConf !== undefined) writeFileSync(join(env.XDG_CONFIG_HOME, 'libvirt', 'qemu.conf'), options.qemuConf, { mode: 0o644 });
  const [cmd, args] = root
    ? ['/usr/bin/setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', LIBVIRTD, '-f', conf]]
    : [LIBVIRTD, ['-f', conf]];
  // detached: its own session and process group (setsid), no terminal; setpriv execs libvirtd in place, so the PID is libvirtd's.
  const daemon = spawn(cmd, args, { env, detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  track(daemon);
  let stderr = '';
  daemon.stderr.on('data', (c: Buffer) => {
    stderr = (stderr + c.toString()).slice(-8192);
  });

  const socket = join(dir, 'run', 'libvirt', 'libvirt-sock');
  const uri = driver === 'qemu' ? `qemu+unix:///session?socket=${socket}` : `test+unix:///default?socket=${socket}`;
  let holder: ChildProcess | undefined;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (holder) await stopChild(holder);
    if (driver === 'qemu' && daemon.exitCode === null) for (const vm of runningDomains(uri)) virshOk(uri, ['destroy', vm]);
    await stopChild(daemon);
    await rm(dir, { recursive: true, force: true });
  };

  try {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    while (!virshOk(uri, ['uri'])) {
      if (daemon.exitCode !== null || daemon.signalCode !== null) throw new Error(`libvirtd exited during start-up: ${stderr}`);
      if (Date.now() > deadline) throw new Error(`libvirtd did not answer within ${READY_TIMEOUT_MS} ms: ${stderr}`);
      await sleep(50);
    }
    if (driver === 'test') {
      // The test driver frees /default's state when its last connection closes: keep one open.
      holder = spawn(VIRSH, ['-c', uri, 'event', '--all', '--loop'], { env: { LC_ALL: 'C', PATH: env.PATH }, detached: true, stdio: 'ignore' });
      track(holder);
      // Only once the holder is connected does removing the built-in domain last: with no connection
      // left, the driver would build /default again, domain "test" included. Waited for, not assumed.
      const admin = `libvirtd:///session?socket=${join(dir, 'run', 'libvirt', 'libvirt-admin-sock')}`;
      while (libvirtClients(admin, root) < 1) {
        if (holder.exitCode !== null) throw new Error(`the test driver's connection holder exited (${holder.exitCode})`);
        if (Date.now() > deadline) throw new Error(`the test driver's connection holder did not connect within ${READY_TIMEOUT_MS} ms`);
        await sleep(50);
      }
      virshOk(uri, ['destroy', 'test']);
      if (!virshOk(uri, ['undefine', 'test'])) throw new Error('could not remove the built-in test domain');
      if (virshOk(uri, ['dominfo', 'test'])) throw new Error('the built-in test domain came back after its removal');
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    uri,
    dir,
    get pid() {
      return daemon.exitCode === null && daemon.signalCode === null ? daemon.pid : undefined;
    },
    stop,
  };
}

/**
 * Several QEMU session libvirtds, one per node name, in `<root>/<name>`, so the daemon's
 * `migration.target_uri_template` can be `uriTemplate` ("…?socket=<root>/{hostname}/run/libvirt/libvirt-sock").
 * The root is world-traversable: with --p2p the source libvirtd (as `nobody`) connects to the target's socket.
 */
export async function startQemuSessions<const N extends string>(names: readonly N[]): Promise<{ root: string; uriTemplate: string; nodes: Record<N, TestLibvirt>; stop(): Promise<void> }> {
  const root = mkdtempSync(join(tmpdir(), 'debvisor-qemu-'));
  chmodSync(root, 0o755);
  const started = await Promise.allSettled(names.map((name) => startLibvirt({ driver: 'qemu', dir: join(root, name) })));
  const nodes = {} as Record<N, TestLibvirt>;
  started.forEach((result, i) => {
    if (result.status === 'fulfilled') nodes[names[i] as N] = result.value;
  });
  const stop = async () => {
    await Promise.all(Object.values<TestLibvirt>(nodes).map((lv) => lv.stop()));
    await rm(root, { recursive: true, force: true });
  };
  const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    await stop();
    throw failed.reason;
  }
  return { root, uriTemplate: `qemu+unix:///session?socket=${root}/{hostname}/run/libvirt/libvirt-sock`, nodes, stop };
}

/** The libvirtd log of a running instance (for failure messages). */
export function libvirtLog(lv: TestLibvirt): string {
  const file = join(lv.dir, 'libvirtd.log');
  return existsSync(file) ? readFileSync(file, 'utf8').slice(-8192) : '';
}

const DOMAIN_FIXTURE = join(import.meta.dirname, '..', 'backends', 'fixtures', 'libvirt', 'test-domain.xml');

/**
 * Defines a copy of the fixture domain "vm1" as `name`, its UUID ending in `uuidTail` (12 hex
 * digits); `extraDisk` (a <disk> element) is added next to the fixture's own disk.
 */
export async function defineTestDomain(lv: TestLibvirt, name: string, uuidTail: string, extraDisk = ''): Promise<void> {
  const xml = (await readFile(DOMAIN_FIXTURE, 'utf8'))
    .replace('<name>vm1</name>', `<name>${name}</name>`)
    .replace('555555555555', uuidTail)
    .replace('<interface ', `${extraDisk}<interface `);
  const dir = await mkdtemp(join(tmpdir(), 'debvisor-domain-'));
  try {
    const file = join(dir, 'domain.xml');
    await writeFile(file, xml);
    await promisify(execFile)(VIRSH, ['-q', '-c', lv.uri, 'define', '--file', file], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
