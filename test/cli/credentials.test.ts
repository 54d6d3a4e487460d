// Where debvisorctl's address and credentials come from (src/cli/credentials.ts): explicit flags,
// then the environment, then the context, then the dev PKI, then /etc; the identity whole from
// one source. And the contexts file: its location, its checks, inline keys refused, and what
// `config set-context` writes (0600, read back the same).
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configDocument, saveCtlConfig, updatedContext } from '../../src/cli/contexts.js';
import { resolveConnection } from '../../src/cli/connection.js';
import { ctlConfigPath, loadCtlConfig, parseCtlConfig, planCredentials, readApiKeyFile, type CtlConfig } from '../../src/cli/credentials.js';
import { CredentialFileError } from '../../src/client/credentials.js';
import { createCa, issueCertificate } from '../../src/pki/index.js';

let dir: string;
let dev: string;
let files: { ca: string; cert: string; key: string; keyFile: string };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'dv-ctl-credentials-'));
  const ca = await createCa({ commonName: 'Test Root' });
  const leaf = await issueCertificate({ ca, profile: 'client', commonName: 'ops' });
  files = { ca: join(dir, 'ca.pem'), cert: join(dir, 'ops-cert.pem'), key: join(dir, 'ops-key.pem'), keyFile: join(dir, 'ci.key') };
  writeFileSync(files.ca, ca.certPem);
  writeFileSync(files.cert, leaf.certPem);
  writeFileSync(files.key, leaf.keyPem);
  writeFileSync(files.keyFile, 'dvk_ci_secret\n', { mode: 0o600 });
  dev = join(dir, 'dev');
  mkdirSync(join(dev, 'pki'), { recursive: true });
  writeFileSync(join(dev, 'pki', 'ca-cert.pem'), ca.certPem);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const config: CtlConfig = {
  currentContext: 'prod',
  contexts: [
    { name: 'prod', server: 'prod:7443', ca: '/ctx/ca.pem', cert: '/ctx/cert.pem', key: '/ctx/key.pem' },
    { name: 'ci', server: 'ci:7443', apiKeyFile: '/ctx/ci.key' },
  ],
};

describe('precedence: flags, environment, context, dev PKI, /etc', () => {
  it('without anything: /etc/debvisor/rpc and 127.0.0.1:7443', () => {
    expect(planCredentials({}, {})).toMatchObject({
      address: '127.0.0.1:7443',
      ca: '/etc/debvisor/rpc/ca-cert.pem',
      cert: '/etc/debvisor/rpc/client-cert.pem',
      key: '/etc/debvisor/rpc/client-key.pem',
      identitySource: 'system',
    });
  });

  it('the dev PKI beats /etc; a context beats the dev PKI', () => {
    expect(planCredentials({}, { DEBVISOR_DEV_DIR: dev })).toMatchObject({ ca: join(dev, 'pki', 'ca-cert.pem'), cert: join(dev, 'pki', 'admin-cert.pem'), identitySource: 'dev PKI' });
    expect(planCredentials({}, { DEBVISOR_DEV_DIR: dev }, config)).toMatchObject({ address: 'prod:7443', ca: '/ctx/ca.pem', cert: '/ctx/cert.pem', identitySource: 'context prod' });
  });

  it('the environment beats the context, item by item; flags beat both', () => {
    const env = { DEBVISORCTL_SERVER: 'env:7443', DEBVISORCTL_CERT: '/env/cert.pem', DEBVISORCTL_KEY: '/env/key.pem' };
    expect(planCredentials({}, env, config)).toMatchObject({ address: 'env:7443', ca: '/ctx/ca.pem', cert: '/env/cert.pem', key: '/env/key.pem', identitySource: 'environment' });
    expect(planCredentials({ server: 'flag:7443', ca: '/flag/ca.pem' }, env, config)).toMatchObject({ address: 'flag:7443', ca: '/flag/ca.pem', cert: '/env/cert.pem' });
  });

  it('an explicit --api-key wins over DEBVISORCTL_CERT: no certificate is sent', () => {
    const plan = planCredentials({ apiKey: 'dvk_flag' }, { DEBVISORCTL_CERT: '/env/cert.pem', DEBVISORCTL_KEY: '/env/key.pem' }, config);
    expect(plan).toMatchObject({ apiKey: { secret: 'dvk_flag' }, identitySource: 'flags' });
    expect(plan.cert).toBeUndefined();
    expect(plan.key).toBeUndefined();
    // And on the wire: the Bearer header only.
    const connection = resolveConnection({ apiKey: 'dvk_flag' }, { DEBVISORCTL_CA: files.ca, DEBVISORCTL_CERT: files.cert, DEBVISORCTL_KEY: files.key });
    expect(connection.metadata).toEqual({ authorization: 'Bearer dvk_flag' });
    expect(connection.describe).toBe('127.0.0.1:7443 as API key');
  });

  it('--api-key-file and a context with an API key file: the key is read from the file', () => {
    const viaFlag = resolveConnection({ apiKeyFile: files.keyFile, ca: files.ca }, {});
    expect(viaFlag.metadata).toEqual({ authorization: 'Bearer dvk_ci_secret' });
    const ci: CtlConfig = { contexts: [{ name: 'ci', ca: files.ca, apiKeyFile: files.keyFile }] };
    const viaContext = resolveConnection({ context: 'ci' }, {}, ci);
    expect(viaContext.metadata).toEqual({ authorization: 'Bearer dvk_ci_secret' });
    expect(viaContext.describe).toBe('127.0.0.1:7443 as API key (context ci)');
  });

  it('--context picks another context; an unknown one is a usage error naming the known ones', () => {
    expect(planCredentials({ context: 'ci' }, {}, config)).toMatchObject({ address: 'ci:7443', apiKey: { file: '/ctx/ci.key' }, identitySource: 'context ci' });
    expect(() => planCredentials({ context: 'nope' }, {}, config)).toThrow(new CredentialFileError('--context: no context named "nope" (known: prod, ci)'));
    expect(() => planCredentials({}, {}, { currentContext: 'gone', contexts: [] }, '/x/ctl.yaml')).toThrow(/current-context in \/x\/ctl.yaml: no context named "gone"/);
  });

  it('half a certificate pair is refused', () => {
    expect(() => planCredentials({ cert: '/a.pem' }, {})).toThrow('--cert and --key must be given together');
  });
});

describe('the contexts file', () => {
  it('lives under $XDG_CONFIG_HOME, else ~/.config', () => {
    expect(ctlConfigPath({ XDG_CONFIG_HOME: '/xdg', HOME: '/home/me' })).toBe('/xdg/debvisor/ctl.yaml');
    expect(ctlConfigPath({ HOME: '/home/me' })).toBe('/home/me/.config/debvisor/ctl.yaml');
    expect(ctlConfigPath({ XDG_CONFIG_HOME: 'relative', HOME: '/home/me' })).toBe('/home/me/.config/debvisor/ctl.yaml');
  });

  it('resolves relative paths against the file, and refuses an inline API key, unknown keys and duplicates', () => {
    const parsed = parseCtlConfig({ 'current-context': 'a', contexts: [{ name: 'a', ca: 'ca.pem', 'api-key-file': 'keys/a.key' }] }, '/home/me/.config/debvisor/ctl.yaml');
    expect(parsed).toEqual({ currentContext: 'a', contexts: [{ name: 'a', ca: '/home/me/.config/debvisor/ca.pem', apiKeyFile: '/home/me/.config/debvisor/keys/a.key' }] });
    expect(() => parseCtlConfig({ contexts: [{ name: 'a', 'api-key': 'dvk_x' }] }, '/f')).toThrow(/contexts\[0\]\.api-key: an API key is never written inline/);
    expect(() => parseCtlConfig({ contexts: [{ name: 'a', token: 'dvk_x' }] }, '/f')).toThrow(/never written inline/);
    expect(() => parseCtlConfig({ contexts: [{ name: 'a', colour: 'red' }] }, '/f')).toThrow(/unknown key "colour"/);
    expect(() => parseCtlConfig({ contexts: [{ name: 'a' }, { name: 'a' }] }, '/f')).toThrow(/"a" is defined twice/);
    expect(() => parseCtlConfig({ contexts: [{ name: 'a', cert: 'c.pem' }] }, '/f')).toThrow(/cert and key go together/);
    expect(() => parseCtlConfig([], '/f')).toThrow(CredentialFileError);
  });

  it('is written 0600 in a 0700 directory and reads back the same', async () => {
    const xdg = join(dir, 'xdg');
    const file = ctlConfigPath({ XDG_CONFIG_HOME: xdg });
    await saveCtlConfig(file, config);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(join(xdg, 'debvisor')).mode & 0o777).toBe(0o700);
    expect(await loadCtlConfig({ XDG_CONFIG_HOME: xdg })).toEqual(config);
    expect(readFileSync(file, 'utf8')).toContain('api-key-file: /ctx/ci.key');
    expect(await loadCtlConfig({ XDG_CONFIG_HOME: join(dir, 'none') })).toBeUndefined();
    writeFileSync(file, 'contexts: [\n');
    await expect(loadCtlConfig({ XDG_CONFIG_HOME: xdg })).rejects.toThrow(/not valid YAML/);
  });

  it('set-context merges what was given; a certificate and a key file replace each other; an inline key is refused', () => {
    const prod = config.contexts[0];
    expect(updatedContext(prod, 'prod', { server: 'new:7443' })).toEqual({ ...prod, server: 'new:7443', apiKeyFile: undefined });
    expect(updatedContext(prod, 'prod', { apiKeyFile: '/k/ci.key' })).toMatchObject({ cert: undefined, key: undefined, apiKeyFile: '/k/ci.key', ca: '/ctx/ca.pem' });
    expect(() => updatedContext(prod, 'prod', { apiKey: 'dvk_x' })).toThrow(/never stores an API key inline/);
    expect(configDocument({ contexts: [{ name: 'x', apiKeyFile: '/k' }] })).toEqual({ contexts: [{ name: 'x', 'api-key-file': '/k' }] });
  });
});

describe('API key files', () => {
  it('reads the first line; refuses a file others can read, an empty one and a missing one', () => {
    expect(readApiKeyFile(files.keyFile)).toBe('dvk_ci_secret');
    const open = join(dir, 'open.key');
    writeFileSync(open, 'dvk_x');
    chmodSync(open, 0o644);
    expect(() => readApiKeyFile(open)).toThrow(/readable by others: chmod 600/);
    const empty = join(dir, 'empty.key');
    writeFileSync(empty, '\n', { mode: 0o600 });
    expect(() => readApiKeyFile(empty)).toThrow(/is empty/);
    expect(() => readApiKeyFile(join(dir, 'missing.key'))).toThrow(/cannot read API key file .*ENOENT/);
  });
});
