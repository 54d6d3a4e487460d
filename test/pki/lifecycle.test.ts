// The certificate life cycle in src/pki: CRLs, CSRs, PKCS#12, CA directories,
// renewal timing, `debvisorctl pki` (in-process) and generate-rpc-certificates.sh.
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CaExistsError,
  createCa,
  createCsr,
  describeCertificate,
  exportPkcs12,
  initCa,
  issueCertificate,
  loadCa,
  normalizeSerialHex,
  parseCrl,
  parseSanList,
  refreshCrl,
  renewCertificate,
  revokeSerials,
  signCsr,
  verifyCrl,
  type PemPair,
} from '../../src/pki/index.js';
import { readCrl } from '../../src/authn/crl.js';
import { TrustBundle } from '../../src/pki/trust.js';
import { renewalDueAt } from '../../src/pki/monitor.js';
import { registerPkiCommands, type PkiCliIo } from '../../src/cli/pki.js';
import { REPO_ROOT } from '../support/daemon.js';

const run = promisify(execFile);
const OPENSSL = '/usr/bin/openssl';
const DAY = 86_400_000;
const SCRIPT = join(REPO_ROOT, 'scripts', 'generate-rpc-certificates.sh');

let work: string;
let n = 0;
let ca: PemPair;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'pki-lifecycle-'));
  ca = await createCa({ commonName: 'Lifecycle CA' });
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function file(contents: string | Buffer, name = `f${n++}.pem`): Promise<string> {
  const p = join(work, name);
  await writeFile(p, contents);
  return p;
}

describe('CRL', () => {
  it('revokes by serial, re-signs with the next number, and both OpenSSL and the daemon read it', async () => {
    const leaf = await issueCertificate({ ca, profile: 'client', commonName: 'web-panel', uris: ['spiffe://debvisor/panel/web-panel'] });
    const serial = new X509Certificate(leaf.certPem).serialNumber;
    const first = await revokeSerials({ ca, serials: [serial], reason: 'keyCompromise' });
    expect(first.added).toEqual([normalizeSerialHex(serial)]);
    expect(first.info.crlNumber).toBe(1n);
    // Colon form of the same serial is recognised as already revoked.
    const colon = serial.match(/../g)!.join(':').toLowerCase();
    const second = await revokeSerials({ ca, crlPem: first.crlPem, serials: [colon, '0x00ABCDEF'] });
    expect(second.alreadyRevoked).toEqual([normalizeSerialHex(serial)]);
    expect(second.added).toEqual(['ABCDEF']);
    expect(second.info.crlNumber).toBe(2n);
    expect(second.info.entries.map((e) => e.reason)).toEqual(['keyCompromise', undefined]);
    expect(second.crlPem.startsWith('-----BEGIN X509 CRL-----\n')).toBe(true);

    const crlFile = await file(second.crlPem);
    const caFile = await file(ca.certPem);
    const text = (await run(OPENSSL, ['crl', '-in', crlFile, '-CAfile', caFile, '-noout', '-text'])).stdout;
    expect(text).toContain(`Serial Number: ${normalizeSerialHex(serial)}`);
    expect(text).toMatch(/X509v3 CRL Number:\s+2/);
    const { revoked } = await readCrl(crlFile, TrustBundle.fromPem(ca.certPem));
    expect([...revoked].sort()).toEqual([normalizeSerialHex(serial), 'ABCDEF'].sort());

    const refreshed = await refreshCrl({ ca, crlPem: second.crlPem, validityDays: 7 });
    const info = parseCrl(refreshed);
    expect(info.crlNumber).toBe(3n);
    expect(info.entries).toHaveLength(2);
    expect(info.nextUpdate!.getTime() - info.thisUpdate.getTime()).toBe(7 * DAY);
  });

  it('refuses to extend a CRL of another CA, and verifyCrl tells them apart', async () => {
    const other = await createCa({ commonName: 'Other CA' });
    const foreign = (await revokeSerials({ ca: other, serials: ['01'] })).crlPem;
    expect(await verifyCrl(foreign, other.certPem)).toBe(true);
    expect(await verifyCrl(foreign, ca.certPem)).toBe(false);
    await expect(revokeSerials({ ca, crlPem: foreign, serials: ['02'] })).rejects.toThrow(/not signed by this CA/);
    await expect(readCrl(await file(foreign), TrustBundle.fromPem(ca.certPem))).rejects.toThrow(/not signed/);
  });

  it('works with an RSA CA too', async () => {
    const rsa = await createCa({ commonName: 'RSA CA', algorithm: 'rsa-4096' });
    const { crlPem } = await revokeSerials({ ca: rsa, serials: ['4A'] });
    expect(await verifyCrl(crlPem, rsa.certPem)).toBe(true);
    await run(OPENSSL, ['crl', '-in', await file(crlPem), '-CAfile', await file(rsa.certPem), '-noout']);
  });

  it('rejects serials that are not hex', () => {
    expect(() => normalizeSerialHex('xyz')).toThrow(/expected hex/);
    expect(normalizeSerialHex(' 00:0a:BC ')).toBe('ABC');
  });
});

describe('CSR signing', () => {
  it('signs the CSR key with the names the signer gives (never the requested ones) and the profile EKU', async () => {
    const { csrPem, keyPem } = await createCsr({ commonName: 'spiffe://debvisor/admin/admin', dnsNames: ['evil.example'], uris: ['spiffe://debvisor/admin/admin'] });
    const certPem = await signCsr({ ca, csrPem, profile: 'server', commonName: 'node7', ...parseSanList(['DNS:node7.example', 'IP:10.1.2.3']), validityDays: 30 });
    const info = describeCertificate(certPem);
    expect(info.commonName).toBe('node7');
    expect(info.sanStrings).toEqual(['DNS:node7.example', 'IP:10.1.2.3']);
    // Without names from the signer the certificate names nothing the CSR asked for.
    const bare = describeCertificate(await signCsr({ ca, csrPem, profile: 'client', commonName: 'runner' }));
    expect(bare.subject).toBe('CN=runner');
    expect(bare.sanStrings).toEqual([]);
    expect(info.profile).toBe('server');
    expect(new X509Certificate(certPem).checkPrivateKey(createPrivateKey(keyPem))).toBe(true);
    await run(OPENSSL, ['verify', '-CAfile', await file(ca.certPem), await file(certPem)]);
  });

  it('signs an OpenSSL CSR with our profile and names, whatever it asks for', async () => {
    const key = join(work, 'openssl-csr-key.pem');
    const csr = join(work, 'openssl.csr');
    await run(OPENSSL, [
      'req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', csr,
      '-subj', '/CN=panel/O=Evil Corp', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'subjectAltName=DNS:asked.example',
    ]);
    const certPem = await signCsr({ ca, csrPem: await readFile(csr, 'utf8'), profile: 'client', commonName: 'panel', ...parseSanList(['URI:spiffe://debvisor/panel/web-panel']) });
    const info = describeCertificate(certPem);
    expect(info.isCa).toBe(false);
    expect(info.subject).toBe('CN=panel');
    expect(info.sanStrings).toEqual(['URI:spiffe://debvisor/panel/web-panel']);
    expect(info.profile).toBe('client');
  });

  it('refuses a CSR whose signature does not verify', async () => {
    const { csrPem } = await createCsr({ commonName: 'x' });
    const der = Buffer.from(csrPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
    der[der.length - 5]! ^= 0xff; // inside the signature
    const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${der.toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
    await expect(signCsr({ ca, csrPem: tampered, profile: 'client', commonName: 'x' })).rejects.toThrow(/signature|PKCS#10/);
  });
});

describe('PKCS#12 export', () => {
  it('writes an ECDSA identity that OpenSSL and Node open with the password, and not without it', async () => {
    const leaf = await issueCertificate({ ca, profile: 'client', commonName: 'web-panel', uris: ['spiffe://debvisor/panel/web-panel'] });
    const p12 = exportPkcs12({ ...leaf, caPem: ca.certPem, password: 'correct horse' });
    const p12File = await file(p12, 'id.p12');
    const opened = await run(OPENSSL, ['pkcs12', '-in', p12File, '-passin', 'pass:correct horse', '-nodes', '-info']);
    const stdout = opened.stdout + opened.stderr;
    expect(stdout).toContain('friendlyName: web-panel');
    expect(stdout).toContain('subject=CN = web-panel');
    expect(stdout).toContain('subject=CN = Lifecycle CA');
    expect(stdout).toContain('-----BEGIN PRIVATE KEY-----');
    expect(() => createSecureContext({ pfx: p12, passphrase: 'correct horse' })).not.toThrow();
    expect(() => createSecureContext({ pfx: p12, passphrase: 'wrong' })).toThrow();
    const info = (await run(OPENSSL, ['pkcs12', '-in', p12File, '-passin', 'pass:correct horse', '-noout', '-info'])).stderr;
    expect(info).toContain('MAC: sha256');
    expect(info).toMatch(/PBES2, PBKDF2, AES-256-CBC/);
  });

  it('has a legacy (3DES, SHA-1 MAC) variant and refuses an empty password or a foreign key', async () => {
    const leaf = await issueCertificate({ ca, profile: 'client', commonName: 'old-browser' });
    const p12 = exportPkcs12({ ...leaf, password: 'pw', legacy: true });
    expect(() => createSecureContext({ pfx: p12, passphrase: 'pw' })).not.toThrow();
    expect(() => exportPkcs12({ ...leaf, password: '' })).toThrow(/password/);
    const other = await issueCertificate({ ca, profile: 'client', commonName: 'other' });
    expect(() => exportPkcs12({ certPem: leaf.certPem, keyPem: other.keyPem, password: 'pw' })).toThrow(/does not match/);
  });
});

describe('CA directory and renewal', () => {
  it('initCa writes 0600 keys and an empty CRL, and never overwrites a CA', async () => {
    const dir = join(work, 'ca-dir');
    const { paths } = await initCa(dir, { commonName: 'Dir CA' });
    expect((await stat(paths.caKey)).mode & 0o777).toBe(0o600);
    expect((await stat(paths.caCert)).mode & 0o777).toBe(0o644);
    expect(parseCrl(await readFile(paths.crl, 'utf8')).entries).toEqual([]);
    const before = await readFile(paths.caCert, 'utf8');
    await expect(initCa(dir, { commonName: 'Again' })).rejects.toBeInstanceOf(CaExistsError);
    expect(await readFile(paths.caCert, 'utf8')).toBe(before);
    const loaded = await loadCa(paths.caCert, paths.caKey);
    expect(loaded.certPem.trim()).toBe(before.trim());
  });

  it('loadCa picks the CA matching the key out of a rollover bundle', async () => {
    const older = await createCa({ commonName: 'Old CA' });
    const bundle = await file(older.certPem + ca.certPem);
    const loaded = await loadCa(bundle, await file(ca.keyPem));
    expect(describeCertificate(loaded.certPem).commonName).toBe('Lifecycle CA');
    await expect(loadCa(await file(older.certPem), await file(ca.keyPem))).rejects.toThrow(/not the key of any CA/);
  });

  it('renewCertificate keeps subject, SANs and profile with a fresh key and serial', async () => {
    const old = await issueCertificate({ ca, profile: 'server', commonName: 'debvisor-rpc', dnsNames: ['debvisor-rpc', 'localhost'], ipAddresses: ['127.0.0.1'], validityDays: 10 });
    const { pair, previous, next } = await renewCertificate({ ca, certPem: old.certPem, validityDays: 90 });
    expect(next.commonName).toBe(previous.commonName);
    expect(next.sanStrings).toEqual(previous.sanStrings);
    expect(next.profile).toBe('server');
    expect(next.serialNumber).not.toBe(previous.serialNumber);
    expect(pair.keyPem).not.toBe(old.keyPem);
    expect(next.notAfter.getTime() - Date.now()).toBeGreaterThan(89 * DAY);
  });
});

describe('renewal timing', () => {
  const policy = { renew_at_lifetime_fraction: 0.667, renew_before_days: 30, jitter_fraction: 0 };
  const now = Date.UTC(2030, 0, 1);

  it('renews a 90-day certificate at 2/3 of its lifetime (day 60), before the 30-day mark', () => {
    const due = renewalDueAt({ notBefore: now, notAfter: now + 90 * DAY, serialNumber: 'AA' }, policy);
    expect((due - now) / DAY).toBeCloseTo(60.03, 1);
  });

  it('renews a 1-year certificate 30 days before expiry (earlier than 2/3)', () => {
    const due = renewalDueAt({ notBefore: now, notAfter: now + 365 * DAY, serialNumber: 'AA' }, { ...policy, renew_at_lifetime_fraction: 0.95 });
    expect((due - now) / DAY).toBeCloseTo(335, 5);
  });

  it('a certificate with 10 days left is due; a fresh one is not', () => {
    expect(renewalDueAt({ notBefore: now - 355 * DAY, notAfter: now + 10 * DAY, serialNumber: 'AA' }, policy)).toBeLessThan(now);
    expect(renewalDueAt({ notBefore: now, notAfter: now + 365 * DAY, serialNumber: 'AA' }, policy)).toBeGreaterThan(now + 200 * DAY);
  });

  it('jitter is bounded, fixed per serial, and differs between serials', () => {
    const leaf = { notBefore: now, notAfter: now + 90 * DAY };
    const jittered = { ...policy, jitter_fraction: 0.1 };
    const base = renewalDueAt({ ...leaf, serialNumber: 'AA' }, policy);
    const dues = ['01', '02', '03', '04', '05', '06'].map((serialNumber) => renewalDueAt({ ...leaf, serialNumber }, jittered));
    for (const due of dues) {
      expect(due).toBeLessThanOrEqual(base);
      expect(due).toBeGreaterThanOrEqual(base - 0.1 * (base - now));
    }
    expect(new Set(dues).size).toBeGreaterThan(1);
    expect(renewalDueAt({ ...leaf, serialNumber: '01' }, jittered)).toBe(dues[0]);
  });
});

describe('debvisorctl pki (in-process)', () => {
  class Exit extends Error {
    constructor(readonly code: number) {
      super(`exit ${code}`);
    }
  }

  async function pki(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const io: PkiCliIo = {
      out: (text) => void (out += text),
      err: (text) => void (err += text),
      exit: (code) => {
        throw new Exit(code);
      },
      env,
      now: () => new Date(),
    };
    const program = new Command('debvisorctl').option('--cert <file>').option('--key <file>').option('--ca <file>').option('-o, --output <format>', '', 'text');
    program.exitOverride();
    registerPkiCommands(program, io);
    try {
      await program.parseAsync(['node', 'debvisorctl', 'pki', ...args]);
      return { code: 0, out, err };
    } catch (e) {
      if (e instanceof Exit) return { code: e.code, out, err };
      throw e;
    }
  }

  it('init-ca, issue with SANs, renew, revoke, crl, export-p12 and status', async () => {
    const dir = join(work, 'cli');
    expect((await pki(['init-ca', '--dir', dir, '--cn', 'CLI CA'])).code).toBe(0);
    const again = await pki(['init-ca', '--dir', dir]);
    expect(again.code).toBe(1);
    expect(again.err).toMatch(/never overwritten/);

    const server = await pki(['issue', 'server', '--cn', 'debvisor-rpc', '--san', 'DNS:debvisor-rpc', '--san', 'IP:127.0.0.1', '--days', '20', '--dir', dir]);
    expect(server.code).toBe(0);
    const serverInfo = describeCertificate(await readFile(join(dir, 'server-cert.pem')));
    expect(serverInfo.sanStrings).toEqual(['DNS:debvisor-rpc', 'IP:127.0.0.1']);
    expect((await stat(join(dir, 'server-key.pem'))).mode & 0o777).toBe(0o600);
    expect((await pki(['issue', 'server', '--cn', 'x', '--dir', dir])).err).toMatch(/exists; use --force/);
    // A missing --out-dir is named as such (not as the internal temp file it would have failed on).
    const missingOut = await pki(['issue', 'client', '--cn', 'x', '--name', 'nowhere', '--dir', dir, '--out-dir', join(dir, 'no-such-dir')]);
    expect(missingOut).toMatchObject({ code: 2, err: `debvisorctl pki: --out-dir ${join(dir, 'no-such-dir')}: no such directory (create it first)\n` });

    const client = await pki(['issue', 'client', '--cn', 'web-panel', '--san', 'URI:spiffe://debvisor/panel/web-panel', '--name', 'web-panel', '--dir', dir, '--p12'], {
      DEBVISORCTL_P12_PASSWORD: 'pw',
    });
    expect(client.code).toBe(0);
    const p12 = await readFile(join(dir, 'web-panel.p12'));
    expect(() => createSecureContext({ pfx: p12, passphrase: 'pw' })).not.toThrow();

    const renewed = await pki(['renew', '--dir', dir, '--days', '200']);
    expect(renewed.code).toBe(0);
    const after = describeCertificate(await readFile(join(dir, 'server-cert.pem')));
    expect(after.sanStrings).toEqual(serverInfo.sanStrings);
    expect(after.serialNumber).not.toBe(serverInfo.serialNumber);

    const clientSerial = describeCertificate(await readFile(join(dir, 'web-panel-cert.pem'))).serialNumber;
    const revoked = await pki(['revoke', '--cert-file', join(dir, 'web-panel-cert.pem'), '--reason', 'keyCompromise', '--dir', dir]);
    expect(revoked.out).toContain(`revoked ${clientSerial}`);
    const crl = await pki(['crl', '--dir', dir]);
    expect(crl.code).toBe(0);
    expect(crl.out).toMatch(/signature:\s+valid/);
    expect(crl.out).toContain(clientSerial);
    expect(crl.out).toContain('keyCompromise');

    const p12File = join(work, 'exported.p12');
    const pwFile = await file('secret\n');
    expect((await pki(['export-p12', '--cert-file', join(dir, 'web-panel-cert.pem'), '--key-file', join(dir, 'web-panel-key.pem'), '--out', p12File, '--password-file', pwFile, '--dir', dir])).code).toBe(0);
    expect(() => createSecureContext({ pfx: readFileSync(p12File), passphrase: 'secret' })).not.toThrow();
    expect((await stat(p12File)).mode & 0o777).toBe(0o600);

    // A certificate with 5 days left is flagged; status exits 1.
    await pki(['issue', 'client', '--cn', 'short', '--name', 'short', '--days', '5', '--dir', dir]);
    const status = await pki(['status', '--dir', dir]);
    expect(status.code).toBe(1);
    expect(status.out).toMatch(/short[\s\S]*!! RENEW SOON/);
    expect(status.out).toMatch(/1 of 4 need attention/);
    const json = JSON.parse((await pki(['status', '--dir', dir, '--warn-days', '1', '-o', 'json'])).out) as { name: string; state: string; days_left: number }[];
    expect(json.map((row) => [row.name, row.state])).toEqual([
      ['ca', 'ok'],
      ['server', 'ok'],
      ['short', 'ok'],
      ['web-panel', 'ok'],
    ]);
  });

  it('status -o json lists the configured certificates', async () => {
    const dir = join(work, 'cli-status');
    await pki(['init-ca', '--dir', dir]);
    await pki(['issue', 'server', '--cn', 'localhost', '--san', 'DNS:localhost', '--dir', dir]);
    const config = await file(`tls:\n  ca_file: ${dir}/ca-cert.pem\n  cert_file: ${dir}/server-cert.pem\n  key_file: ${dir}/server-key.pem\n`, 'status.yaml');
    const result = await pki(['status', '--config', config, '-o', 'json']);
    expect(result.code).toBe(0);
    const rows = JSON.parse(result.out) as { name: string; file: string; sans?: string[] }[];
    expect(rows.map((row) => row.name)).toEqual(['ca', 'server']);
    expect(rows[1]!.sans).toEqual(['DNS:localhost']);
    const text = await pki(['status', '--config', config]);
    expect(text.out).toMatch(/all 2 certificates ok/);
  });

  it('usage errors exit 2 with a clear message', async () => {
    expect(await pki(['issue', 'router', '--cn', 'x'])).toMatchObject({ code: 2, err: expect.stringContaining('profile must be') as unknown });
    expect(await pki(['issue', 'server', '--cn', 'x', '--san', 'FOO:bar'])).toMatchObject({ code: 2, err: expect.stringContaining('invalid SAN') as unknown });
    expect(await pki(['revoke', '--dir', work])).toMatchObject({ code: 2, err: expect.stringContaining('nothing to revoke') as unknown });
    expect((await pki(['issue', 'server'])).code).toBe(2); // --cn missing
    // user:/group: principals belong to impersonated users: the daemon refuses such a certificate.
    expect(await pki(['issue', 'client', '--cn', 'user:alice', '--dir', work])).toMatchObject({ code: 2, err: expect.stringContaining('reserved for impersonated users') as unknown });
    expect(await pki(['issue', 'client', '--cn', 'x', '--san', 'URI:group:ops', '--dir', work])).toMatchObject({ code: 2, err: expect.stringContaining('group: namespace') as unknown });
  });
});

describe('scripts/generate-rpc-certificates.sh', () => {
  async function gen(args: string[]): Promise<string> {
    return (await run(SCRIPT, args)).stdout;
  }

  it('creates CA, server and client certificates that verify, with 0600 keys and 0644 certs; a second run keeps the CA', async () => {
    const dir = join(work, 'script');
    const first = await gen([dir]);
    expect(first).toContain('created a CA');
    expect(first).toMatch(/server-cert\.pem: OK\s+client-cert\.pem: OK/);
    const caBefore = await readFile(join(dir, 'ca-cert.pem'), 'utf8');
    const caKeyBefore = await readFile(join(dir, 'ca-key.pem'), 'utf8');
    const serverBefore = await readFile(join(dir, 'server-cert.pem'), 'utf8');

    for (const name of ['ca-key.pem', 'server-key.pem', 'client-key.pem']) expect((await stat(join(dir, name))).mode & 0o777, name).toBe(0o600);
    for (const name of ['ca-cert.pem', 'server-cert.pem', 'client-cert.pem']) expect((await stat(join(dir, name))).mode & 0o777, name).toBe(0o644);
    const server = describeCertificate(serverBefore);
    expect(server.sanStrings).toEqual(['DNS:debvisor-rpc', 'DNS:localhost', 'IP:127.0.0.1']);
    expect(server.profile).toBe('server');
    const client = describeCertificate(await readFile(join(dir, 'client-cert.pem')));
    expect(client.commonName).toBe('web-panel');
    expect(client.profile).toBe('client');

    const second = await gen([dir]);
    expect(second).toContain('reusing the CA');
    expect(second).toContain('server-cert.pem is current; kept');
    expect(await readFile(join(dir, 'ca-cert.pem'), 'utf8')).toBe(caBefore);
    expect(await readFile(join(dir, 'ca-key.pem'), 'utf8')).toBe(caKeyBefore);
    expect(await readFile(join(dir, 'server-cert.pem'), 'utf8')).toBe(serverBefore);

    // --renew server: a new server certificate from the same CA; the client is kept.
    const third = await gen(['--renew', 'server', dir, '90']);
    expect(third).toContain('issued server-cert.pem');
    expect(third).toContain('client-cert.pem is current; kept');
    expect(await readFile(join(dir, 'ca-cert.pem'), 'utf8')).toBe(caBefore);
    const renewed = describeCertificate(await readFile(join(dir, 'server-cert.pem')));
    expect(renewed.serialNumber).not.toBe(server.serialNumber);
    await run(OPENSSL, ['verify', '-CAfile', join(dir, 'ca-cert.pem'), join(dir, 'server-cert.pem'), join(dir, 'client-cert.pem')]);
    // The daemon's own loader accepts the result.
    expect(new X509Certificate(await readFile(join(dir, 'server-cert.pem'))).checkPrivateKey(createPrivateKey(await readFile(join(dir, 'server-key.pem'))))).toBe(true);
  });

  it('refuses to continue on an incomplete CA rather than regenerate it', async () => {
    const dir = join(work, 'script-incomplete');
    await gen([dir]);
    await rm(join(dir, 'ca-key.pem'));
    await expect(gen([dir])).rejects.toMatchObject({ stderr: expect.stringContaining('refusing to regenerate') as unknown });
  });
});
