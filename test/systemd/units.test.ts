// The systemd unit passes `systemd-analyze verify`, and the tmpfiles entry creates
// the directories the unit makes writable.
//
// Why a copy of the unit: verify checks that ExecStart's binary exists, and
// /usr/bin/debvisor-rpcd exists only once the package is installed. The copy
// differs in that one path, which points to a stub executable; everything else is
// verified as shipped. verify also exits 0 on mere warnings (unknown keys, bad
// values), so any output at all fails the test. It does not resolve User= or
// SupplementaryGroups= (the debvisor user and libvirt group exist only on a host).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../support/daemon.js';

const run = promisify(execFile);
const UNIT = join(REPO_ROOT, 'systemd', 'debvisor-rpcd.service');
const TMPFILES = join(REPO_ROOT, 'systemd', 'debvisor-rpcd.tmpfiles');
const ENV_FILE = join(REPO_ROOT, 'systemd', 'debvisor-rpcd.env');

function which(tool: string): string | undefined {
  return ['/usr/bin', '/bin', '/usr/sbin', '/sbin'].map((dir) => join(dir, tool)).find((path) => existsSync(path));
}
const analyze = which('systemd-analyze');
const tmpfiles = which('systemd-tmpfiles');
if (!analyze) {
  console.warn('test/systemd: systemd-analyze not found; install the Debian package "systemd" (scripts/install-deps) to run these tests');
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'units-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Runs a command; resolves with exit code and combined output instead of throwing. */
async function tryRun(file: string, args: string[]): Promise<{ code: number; output: string }> {
  try {
    const { stdout, stderr } = await run(file, args);
    return { code: 0, output: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

describe.skipIf(!analyze)('debvisor-rpcd.service', () => {
  it('passes systemd-analyze verify with no warnings', async () => {
    const stub = join(dir, 'debvisor-rpcd');
    await writeFile(stub, '#!/bin/sh\nexit 0\n');
    await chmod(stub, 0o755);
    const unit = await readFile(UNIT, 'utf8');
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/debvisor-rpcd /m);
    const copy = join(dir, 'debvisor-rpcd.service');
    await writeFile(copy, unit.replace(/^ExecStart=\/usr\/bin\/debvisor-rpcd /m, `ExecStart=${stub} `));
    const result = await tryRun(analyze!, ['verify', '--man=no', copy]);
    expect(result.output).toBe('');
    expect(result.code).toBe(0);
  });

  it('without the stub, the only complaint is the binary that the package installs', async () => {
    const result = await tryRun(analyze!, ['verify', '--man=no', UNIT]);
    const lines = result.output.split('\n').filter((line) => line.trim() !== '');
    expect(lines).toEqual(['debvisor-rpcd.service: Command /usr/bin/debvisor-rpcd is not executable: No such file or directory']);
  });

  it('reloads with SIGHUP, notifies readiness, drops privileges and hardens', async () => {
    const unit = await readFile(UNIT, 'utf8');
    const settings = new Map<string, string[]>();
    for (const line of unit.split('\n')) {
      const m = /^([A-Za-z]+)=(.*)$/.exec(line);
      if (m) settings.set(m[1]!, [...(settings.get(m[1]!) ?? []), m[2]!]);
    }
    const one = (key: string) => settings.get(key)?.join(' ');
    expect(one('ExecReload')).toBe('/bin/kill -HUP $MAINPID');
    expect(one('Type')).toBe('notify');
    expect(one('NotifyAccess')).toBe('all');
    expect(one('User')).toBe('debvisor');
    for (const key of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp']) expect(one(key), key).toBe('yes');
    expect(one('ProtectSystem')).toBe('strict');
    for (const path of ['/var/log/debvisor', '/var/lib/debvisor', '/etc/debvisor/rpc']) expect(one('ReadWritePaths')).toContain(path);
    for (const key of ['MemoryMax', 'TasksMax', 'LimitNOFILE']) expect(settings.has(key), key).toBe(true);
    // TimeoutStopSec must cover the default drain (server.shutdown_grace_seconds 15) with margin.
    expect(Number(/^(\d+)s$/.exec(one('TimeoutStopSec') ?? '')?.[1])).toBeGreaterThanOrEqual(15 + 10);
    // Every privilege is explained: a comment precedes each privilege line.
    const lines = unit.split('\n');
    for (const key of ['SupplementaryGroups', 'AmbientCapabilities']) {
      const index = lines.findIndex((line) => line.startsWith(`${key}=`));
      expect(lines[index - 1], key).toMatch(/^#/);
    }
  });
});

describe.skipIf(!tmpfiles)('debvisor-rpcd.tmpfiles', () => {
  it('creates the writable directories with the intended modes', async () => {
    const root = join(dir, 'root');
    // The debvisor user exists only on a host: create as root here, check paths and modes.
    const conf = (await readFile(TMPFILES, 'utf8')).replace(/\bdebvisor\s+debvisor\b/g, 'root root').replace(/\bdebvisor\s+adm\b/g, 'root root');
    const copy = join(dir, 'debvisor-rpcd.conf');
    await writeFile(copy, conf);
    const result = await tryRun(tmpfiles!, ['--create', `--root=${root}`, copy]);
    expect(result.output).toBe('');
    expect(result.code).toBe(0);
    for (const [path, mode] of [
      ['etc/debvisor/rpc', 0o750],
      ['var/lib/debvisor', 0o751],
      ['var/lib/debvisor/rpcd', 0o750],
      ['var/lib/debvisor/cloud-init', 0o711],
      ['var/log/debvisor', 0o750],
    ] as const) {
      const st = await stat(join(root, path));
      expect(st.isDirectory(), path).toBe(true);
      expect(st.mode & 0o777, path).toBe(mode);
    }
  });
});

describe('debvisor-rpcd.env', () => {
  it('only sets known DEBVISOR_RPCD_* settings (commented examples included)', async () => {
    const { configLeaves } = await import('../../src/config/load.js');
    const known = configLeaves();
    const text = await readFile(ENV_FILE, 'utf8');
    const names = [...text.matchAll(/^#?(DEBVISOR_RPCD_[A-Z0-9_]+)=/gm)].map((m) => m[1]!);
    expect(names.length).toBeGreaterThan(0);
    for (const name of names) expect(known.has(name), name).toBe(true);
  });
});

describe('sdNotify (Type=notify readiness)', () => {
  it('does nothing without NOTIFY_SOCKET, and runs systemd-notify with the given arguments under systemd', async () => {
    const { sdNotify } = await import('../../src/daemon/sd-notify.js');
    const warnings: unknown[] = [];
    const log = { warn: (...args: unknown[]) => void warnings.push(args) } as unknown as Parameters<typeof sdNotify>[1];
    const bin = join(dir, 'bin');
    const record = join(dir, 'notify-args');
    await mkdir(bin, { recursive: true });
    await writeFile(join(bin, 'systemd-notify'), `#!/bin/sh\nprintf '%s|' "$@" > '${record}'\nprintf '%s' "$NOTIFY_SOCKET" >> '${record}'\nprintf '%s' "$SECRET" >> '${record}'\n`);
    await chmod(join(bin, 'systemd-notify'), 0o755);
    const helper = join(bin, 'systemd-notify');
    // Nothing of the daemon's environment but NOTIFY_SOCKET reaches the helper.
    const env = { SECRET: 'not for systemd-notify' };

    expect(await sdNotify(['--ready'], log, env, helper)).toBe(false);
    expect(existsSync(record)).toBe(false);
    expect(await sdNotify(['--ready', '--status=serving'], log, { ...env, NOTIFY_SOCKET: '/run/systemd/notify' }, helper)).toBe(true);
    expect(await readFile(record, 'utf8')).toBe('--ready|--status=serving|/run/systemd/notify');
    expect(warnings).toEqual([]);
    // A failing helper is a warning, not an error.
    expect(await sdNotify(['--ready'], log, { NOTIFY_SOCKET: '/run/systemd/notify' }, join(bin, 'missing'))).toBe(false);
    expect(warnings).toHaveLength(1);
  });
});
