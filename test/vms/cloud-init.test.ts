// cloud-init NoCloud seeds with the real tools: genisoimage writes the ISO, isoinfo (same Debian
// package) reads it back: volume id, exactly the given files, their bytes. Validation names
// every field, refuses keys sshpk cannot parse, and spawns nothing when it refuses.
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import sshpk from 'sshpk';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecError, type SpawnEvent } from '../../src/backends/exec.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';
import { CloudInitSeeds, MAX_CLOUD_INIT_DOCUMENT_BYTES, seedDocuments, validateCloudInit, type CloudInitInput } from '../../src/vms/cloud-init.js';

const run = promisify(execFile);
const GENISOIMAGE = '/usr/bin/genisoimage';
const ISOINFO = '/usr/bin/isoinfo';
const tools = existsSync(GENISOIMAGE) && existsSync(ISOINFO);

/** A key as ssh-keygen printed it (ssh-keygen -t ed25519 -C alice@host). */
const OPENSSH_ED25519 = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINrtnJzjguuDxynxs1GYnw2hrHlfdvepPaf4s9VTaNy5 alice@host';

function opensshKey(type: 'ed25519' | 'rsa2048' | 'rsa1024' | 'ec', comment: string): string {
  const { publicKey } =
    type === 'ed25519'
      ? generateKeyPairSync('ed25519')
      : type === 'ec'
        ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
        : generateKeyPairSync('rsa', { modulusLength: type === 'rsa2048' ? 2048 : 1024 });
  const line = sshpk.parseKey(publicKey.export({ type: 'spki', format: 'pem' }), 'pem').toString('ssh');
  return `${line.split(' ').slice(0, 2).join(' ')} ${comment}`;
}

const BASE: CloudInitInput = { instanceId: 'i-0001', hostname: 'web-1', sshAuthorizedKeys: [] };

function refusal(fn: () => unknown): InvalidArgumentError {
  try {
    fn();
  } catch (err) {
    if (err instanceof InvalidArgumentError) return err;
    throw err;
  }
  throw new Error('expected an InvalidArgumentError');
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

/** The ISO's files (Rock Ridge names) and its volume id, read by isoinfo. */
async function readIso(iso: string): Promise<{ volumeId: string; files: Record<string, string> }> {
  const { stdout: info } = await run(ISOINFO, ['-d', '-i', iso]);
  const volumeId = /^Volume id: (.*)$/m.exec(info)?.[1] ?? '';
  const { stdout: listing } = await run(ISOINFO, ['-R', '-f', '-i', iso]);
  const files: Record<string, string> = {};
  for (const path of listing.split('\n').filter(Boolean)) {
    files[path] = (await run(ISOINFO, ['-R', '-x', path, '-i', iso], { encoding: 'utf8' })).stdout;
  }
  return { volumeId, files };
}

describe('validateCloudInit', () => {
  const ed = OPENSSH_ED25519;

  it('accepts the user-data formats cloud-init reads and real OpenSSH keys', () => {
    for (const userData of ['#cloud-config\npackages: [htop]\n', '#cloud-config\n', '#!/bin/sh\necho hi\n', 'Content-Type: multipart/mixed; boundary="x"\n\n--x--\n', '#include\nhttps://example.org/a\n']) {
      expect(() => validateCloudInit({ ...BASE, userData }, 'spec.cloud_init')).not.toThrow();
    }
    expect(() =>
      validateCloudInit({ ...BASE, sshAuthorizedKeys: [ed, opensshKey('ed25519', 'b'), opensshKey('rsa2048', 'c'), opensshKey('ec', 'd'), `  ${ed}\n`] }, 'spec.cloud_init'),
    ).not.toThrow();
    expect(() => validateCloudInit({ ...BASE, networkConfig: 'network:\n  version: 2\n  ethernets: {}\n' }, 'spec.cloud_init')).not.toThrow();
    expect(() => validateCloudInit({ ...BASE, networkConfig: 'version: 1\nconfig: []\n', metaData: 'dsmode: local\n' }, 'spec.cloud_init')).not.toThrow();
    expect(() => validateCloudInit({ ...BASE, networkConfig: 'network: {config: disabled}\n' }, 'spec.cloud_init')).not.toThrow();
  });

  const cases: [string, Partial<CloudInitInput>, string, RegExp][] = [
    ['user-data over 64 KiB', { userData: `#cloud-config\n#${'x'.repeat(MAX_CLOUD_INIT_DOCUMENT_BYTES)}` }, 'spec.cloud_init.user_data', /at most 65536 bytes/],
    // 32 769 three-byte characters: under the limit in characters, over it in UTF-8 bytes.
    ['user-data over 64 KiB in UTF-8', { userData: `#!/bin/sh\n#${'€'.repeat(22_000)}` }, 'spec.cloud_init.user_data', /at most 65536 bytes/],
    ['user-data in no cloud-init format', { userData: 'packages: [htop]\n' }, 'spec.cloud_init.user_data', /must start with one of/],
    ['#cloud-config that is not YAML', { userData: '#cloud-config\npackages: [htop\n' }, 'spec.cloud_init.user_data', /not valid YAML/],
    ['#cloud-config that is a list', { userData: '#cloud-config\n- a\n- b\n' }, 'spec.cloud_init.user_data', /YAML mapping/],
    ['#cloud-config with duplicate keys', { userData: '#cloud-config\na: 1\na: 2\n' }, 'spec.cloud_init.user_data', /not valid YAML/],
    ['#cloud-config alias bomb', { userData: `#cloud-config\na: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n` }, 'spec.cloud_init.user_data', /alias/],
    ['#cloud-config-archive', { userData: '#cloud-config-archive\n- a\n' }, 'spec.cloud_init.user_data', /must stand alone/],
    ['user-data with a lone surrogate', { userData: '#!/bin/sh\n\ud800\n' }, 'spec.cloud_init.user_data', /valid UTF-8/],
    ['user-data with NUL', { userData: '#!/bin/sh\n\0\n' }, 'spec.cloud_init.user_data', /NUL/],
    ['meta-data that is a list', { metaData: '- a\n' }, 'spec.cloud_init.meta_data', /YAML mapping/],
    ['meta-data that is no YAML', { metaData: 'a: [\n' }, 'spec.cloud_init.meta_data', /not valid YAML/],
    ['meta-data public-keys as a map', { metaData: 'public-keys:\n  0: {openssh-key: x}\n' }, 'spec.cloud_init.meta_data', /"public-keys" must be/],
    ['network-config without version', { networkConfig: 'ethernets: {}\n' }, 'spec.cloud_init.network_config', /version: 1" or "version: 2/],
    ['network-config version 3', { networkConfig: 'network: {version: 3}\n' }, 'spec.cloud_init.network_config', /version/],
    ['an empty instance id', { instanceId: '' }, 'spec.cloud_init.instance_id', /printable/],
    ['an instance id with a newline', { instanceId: 'a\nb' }, 'spec.cloud_init.instance_id', /printable/],
    ['a hostname that is no host name', { hostname: 'web_1' }, 'spec.cloud_init.hostname', /labels/],
    ['33 keys', { sshAuthorizedKeys: Array.from({ length: 33 }, () => ed) }, 'spec.cloud_init.ssh_authorized_keys', /at most 32/],
  ];
  it.each(cases)('refuses %s, naming the field', (_what, change, field, problem) => {
    const err = refusal(() => validateCloudInit({ ...BASE, ...change }, 'spec.cloud_init'));
    expect(err.field).toBe(field);
    expect(err.message).toMatch(problem);
    expect(toStatus(err, 't').code).toBe(Status.INVALID_ARGUMENT);
  });

  const badKeys: [string, string, RegExp][] = [
    ['garbage', 'not-a-key', /not an OpenSSH public key/],
    ['an unknown key type', 'not a key', /key type must be one of/],
    ['a truncated blob', OPENSSH_ED25519.slice(0, 60), /does not parse/],
    ['a corrupted blob', OPENSSH_ED25519.replace('AAAAINrt', 'AAAAIXrt'), /does not parse|not a ssh-ed25519 key/],
    ['a blob of another type than claimed', `ssh-rsa ${OPENSSH_ED25519.split(' ')[1]}`, /does not parse|not a ssh-rsa key/],
    ['a key with options', `command="/bin/true" ${OPENSSH_ED25519}`, /not an OpenSSH public key/],
    ['two keys in one entry', `${OPENSSH_ED25519}\n${OPENSSH_ED25519}`, /one line/],
    ['a private key', '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----', /one line|not an OpenSSH/],
    ['a DSA key', 'ssh-dss AAAAB3NzaC1kc3MAAACBAP', /key type must be one of/],
    ['an RSA key under 2048 bits', opensshKey('rsa1024', 'weak'), /at least 2048 bits/],
  ];
  it.each(badKeys)('refuses %s as ssh_authorized_keys[1]', (_what, key, problem) => {
    const err = refusal(() => validateCloudInit({ ...BASE, sshAuthorizedKeys: [OPENSSH_ED25519, key] }, 'spec.cloud_init'));
    expect(err.field).toBe('spec.cloud_init.ssh_authorized_keys[1]');
    expect(err.message).toMatch(problem);
  });
});

describe('seedDocuments', () => {
  it('defaults instance-id and local-hostname, keeps user-data as given, and adds the keys to meta-data public-keys', () => {
    const userData = '#cloud-config\n# a comment the seed keeps\npackages: [htop]\n';
    const docs = seedDocuments({ ...BASE, userData, sshAuthorizedKeys: [`${OPENSSH_ED25519}\n`] });
    expect(docs['user-data']).toBe(userData);
    expect(parse(docs['meta-data'])).toEqual({ 'instance-id': 'i-0001', 'local-hostname': 'web-1', 'public-keys': [OPENSSH_ED25519] });
    expect(docs['network-config']).toBeUndefined();
  });

  it('lets meta-data override the defaults and appends to its own public-keys', () => {
    const docs = seedDocuments({ ...BASE, metaData: 'local-hostname: other\npublic-keys: ssh-ed25519 AAAA old\nextra: "yes"\n', sshAuthorizedKeys: [OPENSSH_ED25519] });
    expect(parse(docs['meta-data'])).toEqual({ 'instance-id': 'i-0001', 'local-hostname': 'other', extra: 'yes', 'public-keys': ['ssh-ed25519 AAAA old', OPENSSH_ED25519] });
  });

  it('quotes what YAML would misread: an instance id like "yes" or "0123" stays a string', () => {
    expect(parse(seedDocuments({ ...BASE, instanceId: 'yes' })['meta-data'], { version: '1.1' })).toMatchObject({ 'instance-id': 'yes' });
    expect(parse(seedDocuments({ ...BASE, instanceId: '0123' })['meta-data'], { version: '1.1' })).toMatchObject({ 'instance-id': '0123' });
    expect(parse(seedDocuments({ ...BASE, instanceId: 'a: b # c' })['meta-data'], { version: '1.1' })).toMatchObject({ 'instance-id': 'a: b # c' });
  });
});

describe.skipIf(!tools)('CloudInitSeeds with genisoimage, read back with isoinfo', () => {
  let root: string;
  let dir: string;
  const spawns: SpawnEvent[] = [];
  let seeds: CloudInitSeeds;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'debvisor-seeds-'));
    dir = join(root, 'cloud-init');
    seeds = new CloudInitSeeds({ dir, registry: new Registry(), onSpawn: (e) => spawns.push(e) });
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('holds exactly user-data, meta-data and network-config, on a volume named cidata', async () => {
    const userData = '#cloud-config\npackages: [htop]\nwrite_files:\n  - path: /etc/motd\n    content: "héllo ✓"\n';
    const networkConfig = 'network:\n  version: 2\n  ethernets:\n    eth0: {dhcp4: true}\n';
    const key = opensshKey('ed25519', 'ci@runner');
    const iso = await seeds.build('web-1', { ...BASE, userData, networkConfig, sshAuthorizedKeys: [key] }, 'spec.cloud_init');
    expect(iso).toBe(join(dir, 'web-1.iso'));
    const read = await readIso(iso);
    expect(read.volumeId).toBe('cidata');
    expect(Object.keys(read.files).sort()).toEqual(['/meta-data', '/network-config', '/user-data']);
    expect(read.files['/user-data']).toBe(userData);
    expect(read.files['/network-config']).toBe(networkConfig);
    expect(parse(read.files['/meta-data']!)).toEqual({ 'instance-id': 'i-0001', 'local-hostname': 'web-1', 'public-keys': [key] });
    // Joliet names too (Windows guests, cloudbase-init).
    const { stdout: joliet } = await run(ISOINFO, ['-J', '-f', '-i', iso]);
    expect(joliet.split('\n').filter(Boolean).sort()).toEqual(['/meta-data', '/network-config', '/user-data']);

    expect((await stat(iso)).mode & 0o777).toBe(0o600);
    expect((await stat(dir)).mode & 0o777).toBe(0o711);
    expect(await readdir(dir)).toEqual(['web-1.iso']);
  });

  it('without network-config holds two files; a rebuild replaces the seed; removeSeed removes it', async () => {
    const iso = await seeds.build('web-2', BASE, 'spec.cloud_init');
    let read = await readIso(iso);
    expect(Object.keys(read.files).sort()).toEqual(['/meta-data', '/user-data']);
    expect(read.files['/user-data']).toBe('#cloud-config\n{}\n');
    await seeds.build('web-2', { ...BASE, userData: '#!/bin/sh\necho second\n' }, 'spec.cloud_init');
    read = await readIso(iso);
    expect(read.files['/user-data']).toBe('#!/bin/sh\necho second\n');
    expect((await readdir(dir)).sort()).toEqual(['web-1.iso', 'web-2.iso']);
    await seeds.removeSeed('web-2');
    await seeds.removeSeed('web-2');
    expect(await readdir(dir)).toEqual(['web-1.iso']);
  });

  it('spawns nothing for a bad document, key or VM name', async () => {
    spawns.length = 0;
    const bad = await rejection(seeds.build('web-3', { ...BASE, sshAuthorizedKeys: ['ssh-ed25519 AAAA'] }, 'spec.cloud_init'));
    expect((bad as InvalidArgumentError).field).toBe('spec.cloud_init.ssh_authorized_keys[0]');
    const name = await rejection(seeds.build('../etc/x', BASE, 'spec.cloud_init'));
    expect((name as InvalidArgumentError).field).toBe('vm_name');
    expect(() => seeds.seedPath('-rf')).toThrow(InvalidArgumentError);
    expect(spawns).toEqual([]);
    expect(await readdir(dir)).toEqual(['web-1.iso']);
  });

  it('a failing genisoimage leaves neither a seed nor a temp file', async () => {
    // /bin/false: a genisoimage that exits 1 without writing (as it does when its output cannot be written).
    const failing = new CloudInitSeeds({ dir, registry: new Registry(), genisoimagePath: '/bin/false' });
    const err = await rejection(failing.build('web-4', BASE, 'spec.cloud_init'));
    expect(err).toBeInstanceOf(ExecError);
    expect(toStatus(err, 't').code).toBe(Status.INTERNAL);
    const missing = new CloudInitSeeds({ dir, registry: new Registry(), genisoimagePath: join(root, 'no-genisoimage') });
    expect(toStatus(await rejection(missing.build('web-4', BASE, 'spec.cloud_init')), 't').code).toBe(Status.UNAVAILABLE);
    expect(await readdir(dir)).toEqual(['web-1.iso']);
  });

  it('keeps its modes under the unit\'s UMask=0027', async () => {
    const strict = new CloudInitSeeds({ dir: join(root, 'umask', 'seeds'), registry: new Registry(), readableByAll: true });
    const previous = process.umask(0o027);
    try {
      const iso = await strict.build('web-6', BASE, 'spec.cloud_init');
      expect((await stat(join(root, 'umask', 'seeds'))).mode & 0o777).toBe(0o711);
      expect((await stat(iso)).mode & 0o777).toBe(0o644);
    } finally {
      process.umask(previous);
    }
  });

  it('readableByAll makes the seed 0644', async () => {
    const open = new CloudInitSeeds({ dir, registry: new Registry(), readableByAll: true });
    expect((await stat(await open.build('web-5', BASE, 'spec.cloud_init'))).mode & 0o777).toBe(0o644);
    await open.removeSeed('web-5');
  });
});
