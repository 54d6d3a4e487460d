// debvisorctl's credentials, contexts, exit codes and output formats end to end: the built CLI
// (dist/cli/debvisorctl.js, the esbuild bundle) against a real daemon over mTLS, with a scratch
// XDG_CONFIG_HOME for its contexts file and no credentials in the environment unless a test
// puts them there.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { requireBuiltDist } from '../support/built.js';
import { CTL, ctlOn, type CtlResult } from '../support/ctl.js';
import { daemonEnv, REPO_ROOT, startDaemon, type RunningDaemon } from '../support/daemon.js';

let daemon: RunningDaemon;
let home: string;
let apiKeyFile: string;
let apiKeyId: string;

/** debvisorctl with only `env` (and a scratch XDG_CONFIG_HOME): no DEBVISORCTL_* unless given. */
function ctlWith(env: Record<string, string>, ...args: string[]): Promise<CtlResult> {
  requireBuiltDist();
  const inherited = Object.entries(daemonEnv({ XDG_CONFIG_HOME: join(home, 'config'), ...env })).filter(
    ([key]) => key in env || !(key.startsWith('DEBVISORCTL_') || key === 'DEBVISOR_DEV_DIR'),
  );
  const base = Object.fromEntries(inherited);
  return new Promise((resolve) => {
    execFile(process.execPath, [CTL, ...args], { cwd: REPO_ROOT, env: base, timeout: 120_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

const adminEnv = () => ({ DEBVISORCTL_SERVER: daemon.grpcAddress, DEBVISORCTL_CA: daemon.pki.caCert, DEBVISORCTL_CERT: daemon.pki.adminCert, DEBVISORCTL_KEY: daemon.pki.adminKey });

async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const address = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

beforeAll(async () => {
  home = mkdtempSync(join(tmpdir(), 'dv-ctl-contexts-'));
  daemon = await startDaemon();
  const created = await ctlOn(daemon, '-o', 'json', 'apikey', 'create', '-p', 'vm:list', '-d', 'cli contexts test');
  expect(created.code, created.stderr).toBe(0);
  const response = JSON.parse(created.stdout) as { secret: string; apiKey: { keyId: string } };
  apiKeyId = response.apiKey.keyId;
  apiKeyFile = join(home, 'ci.key');
  writeFileSync(apiKeyFile, `${response.secret}\n`, { mode: 0o600 });
});

afterAll(async () => {
  await (daemon as RunningDaemon | undefined)?.cleanup();
  rmSync(home, { recursive: true, force: true });
});

describe('which credential wins', () => {
  it('an explicit --api-key beats a certificate in the environment', async () => {
    const secret = readFileSync(apiKeyFile, 'utf8').trim();
    const asKey = await ctlWith(adminEnv(), '-o', 'json', '--api-key', secret, 'whoami');
    expect(asKey.code, asKey.stderr).toBe(0);
    expect(JSON.parse(asKey.stdout)).toMatchObject({ apiKeyId });
    const asCert = await ctlWith(adminEnv(), '-o', 'json', 'whoami');
    expect(JSON.parse(asCert.stdout)).not.toHaveProperty('apiKeyId');
    const viaFile = await ctlWith(adminEnv(), '-o', 'json', '--api-key-file', apiKeyFile, 'whoami');
    expect(JSON.parse(viaFile.stdout)).toMatchObject({ apiKeyId });
  });
});

describe('contexts', () => {
  it('set-context writes ctl.yaml 0600; the current context is used; --context and the environment win over it', async () => {
    const set = await ctlWith({}, '--server', daemon.grpcAddress, '--ca', daemon.pki.caCert, '--api-key-file', apiKeyFile, 'config', 'set-context', 'ci', '--current');
    expect(set.code, set.stderr).toBe(0);
    expect(statSync(join(home, 'config', 'debvisor', 'ctl.yaml')).mode & 0o777).toBe(0o600);
    const admin = await ctlWith({}, '--server', daemon.grpcAddress, '--ca', daemon.pki.caCert, '--cert', daemon.pki.adminCert, '--key', daemon.pki.adminKey, 'config', 'set-context', 'admin');
    expect(admin.code, admin.stderr).toBe(0);

    expect((await ctlWith({}, 'config', 'current-context')).stdout).toBe('ci\n');
    const contexts = await ctlWith({}, 'config', 'get-contexts');
    expect(contexts.stdout).toMatch(/│ \* +│ ci +│/);
    expect(contexts.stdout).toMatch(/│ +│ admin +│/);

    // The current context (an API key), in YAML.
    const viaContext = await ctlWith({}, '-o', 'yaml', 'whoami');
    expect(viaContext.code, viaContext.stderr).toBe(0);
    expect(parse(viaContext.stdout)).toMatchObject({ apiKeyId, authMethod: expect.stringMatching(/api/i) as unknown });
    // --context picks the other one.
    const viaAdmin = await ctlWith({}, '-o', 'json', '--context', 'admin', 'whoami');
    expect(JSON.parse(viaAdmin.stdout)).toMatchObject({ principalId: daemon.pki.adminPrincipal });
    expect(JSON.parse(viaAdmin.stdout)).not.toHaveProperty('apiKeyId');
    // The environment's certificate beats the context's API key.
    const viaEnv = await ctlWith({ DEBVISORCTL_CERT: daemon.pki.adminCert, DEBVISORCTL_KEY: daemon.pki.adminKey }, '-o', 'json', 'whoami');
    expect(JSON.parse(viaEnv.stdout)).not.toHaveProperty('apiKeyId');

    expect(await ctlWith({}, 'config', 'use-context', 'admin')).toMatchObject({ code: 0, stdout: 'switched to context "admin"\n' });
    expect(JSON.parse((await ctlWith({}, '-o', 'json', 'whoami')).stdout)).not.toHaveProperty('apiKeyId');
  });

  it('refuses an inline API key (exit 2), and an unknown context', async () => {
    const inline = await ctlWith({}, '--api-key', 'dvk_x_y', 'config', 'set-context', 'bad');
    expect(inline.code).toBe(2);
    expect(inline.stderr).toContain('never stores an API key inline');
    expect((await ctlWith({}, 'config', 'use-context', 'nope')).code).toBe(2);
    const unknown = await ctlWith({}, '--context', 'nope', 'whoami');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('--context: no context named "nope"');

    const otherHome = mkdtempSync(join(tmpdir(), 'dv-ctl-inline-'));
    try {
      const file = join(otherHome, 'debvisor', 'ctl.yaml');
      mkdirSync(join(otherHome, 'debvisor'));
      writeFileSync(file, `current-context: x\ncontexts:\n  - name: x\n    server: ${daemon.grpcAddress}\n    api-key: dvk_inline_secret\n`, { mode: 0o600 });
      const refused = await ctlWith({ XDG_CONFIG_HOME: otherHome }, 'whoami');
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain('an API key is never written inline');
    } finally {
      rmSync(otherHome, { recursive: true, force: true });
    }
  });
});

describe('exit codes', () => {
  it('0 ok, 1 refused, 2 usage, 3 unreachable, 4 timeout; errors are JSON on stderr with -o json', async () => {
    expect((await ctlWith(adminEnv(), 'whoami')).code).toBe(0);

    const refused = await ctlWith(adminEnv(), 'apikey', 'revoke', 'dvk_0000000000000000');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^debvisorctl: [A-Z_]+: .*\(trace_id=[0-9a-f]+\)\n$/);

    const usage = await ctlWith(adminEnv(), 'whoami', '--bogus');
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("unknown option '--bogus'");
    expect((await ctlWith(adminEnv(), 'vmm', 'list')).code).toBe(2);
    expect((await ctlWith(adminEnv(), '-o', 'xml', 'whoami')).code).toBe(2);
    expect((await ctlWith(adminEnv(), '--timeout', 'soon', 'whoami')).code).toBe(2);

    const port = await closedPort();
    const unreachable = await ctlWith({ ...adminEnv(), DEBVISORCTL_SERVER: `127.0.0.1:${port}` }, 'whoami');
    expect(unreachable.code).toBe(3);
    expect(unreachable.stderr).toMatch(/^debvisorctl: UNAVAILABLE: /);

    const timeout = await ctlWith(adminEnv(), '--timeout', '0.001', 'whoami');
    expect(timeout.code).toBe(4);
    expect(timeout.stderr).toMatch(/^debvisorctl: DEADLINE_EXCEEDED: /);

    const jsonUnreachable = await ctlWith({ ...adminEnv(), DEBVISORCTL_SERVER: `127.0.0.1:${port}` }, '-o', 'json', 'whoami');
    expect(jsonUnreachable.code).toBe(3);
    expect(JSON.parse(jsonUnreachable.stderr)).toMatchObject({ error: { code: 'UNAVAILABLE', exitCode: 3 } });
    const jsonUsage = await ctlWith(adminEnv(), '-o', 'json', 'whoami', '--bogus');
    expect(jsonUsage.code).toBe(2);
    expect(JSON.parse(jsonUsage.stderr)).toMatchObject({ error: { code: 'USAGE', message: "unknown option '--bogus'", exitCode: 2 } });
    const jsonRefused = await ctlWith(adminEnv(), '-o', 'yaml', 'apikey', 'revoke', 'dvk_0000000000000000');
    expect(jsonRefused.code).toBe(1);
    expect(JSON.parse(jsonRefused.stderr)).toMatchObject({ error: { exitCode: 1 } });
  });
});

describe('output', () => {
  it('-o yaml prints the document as YAML; rotated keys: the OLD key is the one marked rotated', async () => {
    const rotated = await ctlWith(adminEnv(), '-o', 'yaml', 'apikey', 'rotate', apiKeyId);
    expect(rotated.code, rotated.stderr).toBe(0);
    const document = parse(rotated.stdout) as { apiKey: { keyId: string }; oldApiKey: { keyId: string } };
    expect(document.oldApiKey.keyId).toBe(apiKeyId);
    const newId = document.apiKey.keyId;
    const listed = await ctlWith(adminEnv(), '-o', 'wide', 'apikey', 'list');
    expect(listed.stdout).toMatch(new RegExp(`${apiKeyId} .*active \\(rotated\\)`));
    expect(listed.stdout).toMatch(new RegExp(`${newId} .*│ active +│`));
    const narrow = await ctlWith(adminEnv(), 'apikey', 'list');
    for (const line of narrow.stdout.trimEnd().split('\n')) expect(Array.from(line).length).toBeLessThanOrEqual(80);
  });

  it('completion and the version need no daemon', async () => {
    const bash = await ctlWith({}, 'completion', 'bash');
    expect(bash.code).toBe(0);
    expect(bash.stdout).toContain("'vm snapshot')");
    expect((await ctlWith({}, 'completion', 'tcsh')).code).toBe(2);
    expect((await ctlWith({}, '--version')).stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });
});
