import { X509Certificate, createPrivateKey } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { connect, createServer, type TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createCa,
  ensureDevPki,
  issueCertificate,
  selfSignedCertificate,
  writeFileAtomic,
  writeNewFileExclusive,
  DEV_ADMIN_PRINCIPAL,
  type PemPair,
} from '../../src/pki/index.js';

const run = promisify(execFile);
const OPENSSL = '/usr/bin/openssl';
const ADMIN = 'spiffe://debvisor/admin/admin';

let work: string;
let n = 0;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'pki-test-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function file(contents: string): Promise<string> {
  const p = join(work, `f${n++}.pem`);
  await writeFile(p, contents);
  return p;
}

/** `openssl verify`; resolves to {ok, output} instead of throwing. */
async function opensslVerify(ca: PemPair, certPem: string, ...extra: string[]): Promise<{ ok: boolean; output: string }> {
  const args = ['verify', '-CAfile', await file(ca.certPem), ...extra, await file(certPem)];
  try {
    const { stdout, stderr } = await run(OPENSSL, args);
    return { ok: true, output: stdout + stderr };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string };
    return { ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

async function opensslText(certPem: string): Promise<string> {
  return (await run(OPENSSL, ['x509', '-noout', '-text', '-in', await file(certPem)])).stdout;
}

function serialOf(certPem: string): string {
  return new X509Certificate(certPem).serialNumber;
}

describe('createCa', () => {
  let ca: PemPair;
  beforeAll(async () => {
    ca = await createCa({ commonName: 'Test CA' });
  });

  it('produces a CA certificate with the required extensions', async () => {
    const text = await opensslText(ca.certPem);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    expect(text).toMatch(/X509v3 Key Usage: critical\s+Certificate Sign, CRL Sign/);
    expect(text).toContain('X509v3 Subject Key Identifier');
    expect(text).toContain('Subject: CN = Test CA');
    const cert = new X509Certificate(ca.certPem);
    expect(cert.ca).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(ca.keyPem))).toBe(true);
    const days = (cert.validToDate.getTime() - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(3649);
    expect(days).toBeLessThan(3651);
  });

  it('writes PKCS#8 keys that Node and OpenSSL load', async () => {
    expect(ca.keyPem.startsWith('-----BEGIN PRIVATE KEY-----\n')).toBe(true);
    expect(ca.certPem.startsWith('-----BEGIN CERTIFICATE-----\n')).toBe(true);
    expect(ca.certPem.endsWith('-----END CERTIFICATE-----\n')).toBe(true);
    expect(createPrivateKey(ca.keyPem).asymmetricKeyType).toBe('ec');
    const { stdout } = await run(OPENSSL, ['pkey', '-noout', '-text', '-in', await file(ca.keyPem)]);
    expect(stdout).toContain('prime256v1');
  });

  it('supports RSA-4096 CAs that can issue leaves', async () => {
    const rsa = await createCa({ commonName: 'RSA CA', algorithm: 'rsa-4096', validityDays: 30 });
    const key = createPrivateKey(rsa.keyPem);
    expect(key.asymmetricKeyType).toBe('rsa');
    expect(key.asymmetricKeyDetails?.modulusLength).toBe(4096);
    const leaf = await issueCertificate({ ca: rsa, profile: 'server', commonName: 'x', dnsNames: ['x'], validityDays: 1 });
    expect((await opensslVerify(rsa, leaf.certPem)).ok).toBe(true);
    expect(await opensslText(leaf.certPem)).toContain('sha256WithRSAEncryption');
  }, 60_000);

  it('keeps CN values containing DN metacharacters intact', async () => {
    const odd = await createCa({ commonName: 'Acme, Inc=1+2' });
    // One CN attribute; Node escapes the metacharacters when printing it.
    expect(new X509Certificate(odd.certPem).subject).toBe('CN=Acme\\, Inc=1\\+2');
  });
});

describe('issueCertificate', () => {
  let ca: PemPair;
  let server: PemPair;
  let client: PemPair;
  beforeAll(async () => {
    ca = await createCa({ commonName: 'Issuing CA' });
    server = await issueCertificate({
      ca,
      profile: 'server',
      commonName: 'localhost',
      dnsNames: ['localhost', 'node1.debvisor.internal'],
      ipAddresses: ['127.0.0.1', '::1'],
      validityDays: 30,
    });
    client = await issueCertificate({ ca, profile: 'client', commonName: 'admin', uris: [ADMIN], validityDays: 30 });
  });

  it('server cert verifies for sslserver and carries serverAuth + SANs', async () => {
    const v = await opensslVerify(ca, server.certPem, '-purpose', 'sslserver');
    expect(v.ok, v.output).toBe(true);
    expect((await opensslVerify(ca, server.certPem, '-purpose', 'sslclient')).ok).toBe(false);
    const text = await opensslText(server.certPem);
    expect(text).toMatch(/X509v3 Extended Key Usage:\s+TLS Web Server Authentication\n/);
    expect(text).toMatch(/X509v3 Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/X509v3 Key Usage: critical\s+Digital Signature\n/);
    expect(text).toContain(
      'DNS:localhost, DNS:node1.debvisor.internal, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1',
    );
    expect(text).toContain('X509v3 Authority Key Identifier');
    expect(text).toContain('id-ecPublicKey');
    const cert = new X509Certificate(server.certPem);
    expect(cert.checkPrivateKey(createPrivateKey(server.keyPem))).toBe(true);
    expect(cert.checkHost('localhost')).toBe('localhost');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
  });

  it('client cert verifies for sslclient and carries clientAuth + URI SAN', async () => {
    const v = await opensslVerify(ca, client.certPem, '-purpose', 'sslclient');
    expect(v.ok, v.output).toBe(true);
    const text = await opensslText(client.certPem);
    expect(text).toMatch(/X509v3 Extended Key Usage:\s+TLS Web Client Authentication\n/);
    expect(text).toContain(`URI:${ADMIN}`);
    const cert = new X509Certificate(client.certPem);
    expect(cert.subjectAltName).toBe(`URI:${ADMIN}`);
    expect(cert.checkPrivateKey(createPrivateKey(client.keyPem))).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(server.keyPem))).toBe(false);
  });

  it('AKI of the leaf equals the SKI of the CA', async () => {
    const ski = /Subject Key Identifier:\s+([0-9A-F:]+)/.exec(await opensslText(ca.certPem))?.[1];
    const aki = /Authority Key Identifier:\s+(?:keyid:)?([0-9A-F:]+)/.exec(await opensslText(client.certPem))?.[1];
    expect(ski).toBeTruthy();
    expect(aki).toBe(ski);
  });

  it('honours an EKU override (client cert without clientAuth)', async () => {
    const noClientAuth = await issueCertificate({
      ca,
      profile: 'client',
      commonName: 'admin',
      uris: [ADMIN],
      validityDays: 1,
      extendedKeyUsages: ['serverAuth'],
    });
    expect((await opensslVerify(ca, noClientAuth.certPem)).ok).toBe(true);
    expect((await opensslVerify(ca, noClientAuth.certPem, '-purpose', 'sslclient')).ok).toBe(false);
    const noEku = await issueCertificate({ ca, profile: 'client', commonName: 'x', validityDays: 1, extendedKeyUsages: [] });
    expect(await opensslText(noEku.certPem)).not.toContain('Extended Key Usage');
  });

  it('honours notBefore/notAfter overrides (expired certs fail verification)', async () => {
    const expired = await issueCertificate({
      ca,
      profile: 'client',
      commonName: 'old',
      validityDays: 1,
      notBefore: new Date(Date.now() - 10 * 86_400_000),
      notAfter: new Date(Date.now() - 86_400_000),
    });
    const v = await opensslVerify(ca, expired.certPem);
    expect(v.ok).toBe(false);
    expect(v.output).toContain('certificate has expired');
  });

  it('caps leaf validity at the CA expiry unless notAfter is explicit', async () => {
    const shortCa = await createCa({ commonName: 'Short CA', validityDays: 2 });
    const leaf = await issueCertificate({ ca: shortCa, profile: 'server', commonName: 'x', validityDays: 365 });
    expect(new X509Certificate(leaf.certPem).validToDate.getTime()).toBe(
      new X509Certificate(shortCa.certPem).validToDate.getTime(),
    );
  });

  it('rejects a mismatched CA key and invalid SANs', async () => {
    const other = await createCa({ commonName: 'Other' });
    await expect(
      issueCertificate({ ca: { certPem: ca.certPem, keyPem: other.keyPem }, profile: 'server', commonName: 'x' }),
    ).rejects.toThrow(/does not match/);
    await expect(issueCertificate({ ca, profile: 'server', commonName: 'x', ipAddresses: ['300.1.1.1'] })).rejects.toThrow(
      /invalid IP/,
    );
    await expect(issueCertificate({ ca, profile: 'server', commonName: 'x', uris: ['not a uri'] })).rejects.toThrow(
      /invalid URI/,
    );
    // A leaf is not a CA and cannot issue.
    await expect(issueCertificate({ ca: server, profile: 'client', commonName: 'x' })).rejects.toThrow(/CA:true/);
  });

  it('self-signed cert naming a real principal does NOT verify against the CA', async () => {
    const fake = await selfSignedCertificate({ commonName: 'admin', uris: [ADMIN], profile: 'client' });
    const text = await opensslText(fake.certPem);
    expect(text).toContain(`URI:${ADMIN}`);
    expect(text).toMatch(/CA:FALSE/);
    const v = await opensslVerify(ca, fake.certPem);
    expect(v.ok).toBe(false);
    expect(v.output).toMatch(/self-signed certificate|unable to get local issuer/);
    expect(new X509Certificate(fake.certPem).checkPrivateKey(createPrivateKey(fake.keyPem))).toBe(true);
  });

  it('uses distinct random 128-bit positive serials', async () => {
    const serials = [ca.certPem, server.certPem, client.certPem];
    for (let i = 0; i < 5; i++) {
      serials.push((await issueCertificate({ ca, profile: 'client', commonName: `c${i}`, validityDays: 1 })).certPem);
    }
    const hex = serials.map(serialOf);
    expect(new Set(hex).size).toBe(hex.length);
    for (const h of hex) {
      expect(h).toMatch(/^[0-9A-F]{32}$/); // exactly 16 bytes, no 0x00 sign pad
      expect(parseInt(h.slice(0, 1), 16)).toBeLessThan(8); // positive
      expect(BigInt(`0x${h}`) >= 1n << 126n).toBe(true); // full-width, not a small number
    }
  });

  it('completes a real mutual-TLS handshake with the issued certs', async () => {
    const server_ = createServer({
      cert: server.certPem,
      key: server.keyPem,
      ca: ca.certPem,
      requestCert: true,
      rejectUnauthorized: true,
    });
    const peer = new Promise<string | undefined>((resolve) => {
      server_.on('secureConnection', (s: TLSSocket) => {
        resolve(s.getPeerX509Certificate()?.subjectAltName);
        s.end();
      });
    });
    await new Promise<void>((r) => server_.listen(0, '127.0.0.1', r));
    const addr = server_.address();
    if (addr === null || typeof addr === 'string') throw new Error('no address');
    try {
      const sock = connect({
        host: '127.0.0.1',
        port: addr.port,
        servername: 'localhost',
        ca: ca.certPem,
        cert: client.certPem,
        key: client.keyPem,
      });
      await new Promise<void>((resolve, reject) => {
        sock.once('secureConnect', () => resolve());
        sock.once('error', reject);
      });
      expect(sock.authorized).toBe(true);
      expect(await peer).toBe(`URI:${ADMIN}`);
      sock.destroy();
    } finally {
      server_.close();
    }
  });
});

describe('files', () => {
  it('writeFileAtomic replaces content with the requested mode', async () => {
    const p = join(work, 'atomic.pem');
    await writeFileAtomic(p, 'one', 0o600);
    await writeFileAtomic(p, 'two', 0o644);
    expect(await readFile(p, 'utf8')).toBe('two');
    expect((await stat(p)).mode & 0o777).toBe(0o644);
  });

  it('writeNewFileExclusive never overwrites', async () => {
    const p = join(work, 'exclusive.pem');
    await writeNewFileExclusive(p, 'first', 0o600);
    await expect(writeNewFileExclusive(p, 'second', 0o600)).rejects.toMatchObject({ code: 'EEXIST' });
    expect(await readFile(p, 'utf8')).toBe('first');
    expect((await stat(p)).mode & 0o777).toBe(0o600);
  });
});

describe('ensureDevPki', () => {
  it('creates the dev PKI once and reuses the CA', async () => {
    const dir = join(work, 'dev', 'pki');
    const p = await ensureDevPki(dir);
    expect(p.adminPrincipal).toBe(DEV_ADMIN_PRINCIPAL);
    expect(p.adminPrincipal).toBe(ADMIN);
    expect((await stat(dir)).mode & 0o777).toBe(0o700);
    for (const key of [p.caKey, p.serverKey, p.adminKey]) expect((await stat(key)).mode & 0o777).toBe(0o600);
    for (const cert of [p.caCert, p.serverCert, p.adminCert]) expect((await stat(cert)).mode & 0o777).toBe(0o644);

    const ca = { certPem: await readFile(p.caCert, 'utf8'), keyPem: await readFile(p.caKey, 'utf8') };
    expect(new X509Certificate(ca.certPem).subject).toBe('CN=DebVisor Dev CA');
    const serverPem = await readFile(p.serverCert, 'utf8');
    const adminPem = await readFile(p.adminCert, 'utf8');
    expect((await opensslVerify(ca, serverPem, '-purpose', 'sslserver')).ok).toBe(true);
    expect((await opensslVerify(ca, adminPem, '-purpose', 'sslclient')).ok).toBe(true);
    expect(new X509Certificate(serverPem).subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1');
    expect(new X509Certificate(adminPem).subjectAltName).toBe(`URI:${ADMIN}`);
    expect(new X509Certificate(adminPem).subject).toBe('CN=admin');

    // Second call: everything byte-identical.
    const p2 = await ensureDevPki(dir);
    expect(p2).toEqual(p);
    expect(await readFile(p.caCert, 'utf8')).toBe(ca.certPem);
    expect(await readFile(p.caKey, 'utf8')).toBe(ca.keyPem);
    expect(await readFile(p.serverCert, 'utf8')).toBe(serverPem);
    expect(await readFile(p.adminCert, 'utf8')).toBe(adminPem);

    // Deleted server cert: re-issued from the same CA, CA untouched.
    await unlink(p.serverCert);
    await ensureDevPki(dir);
    const reissued = await readFile(p.serverCert, 'utf8');
    expect(reissued).not.toBe(serverPem);
    expect((await opensslVerify(ca, reissued, '-purpose', 'sslserver')).ok).toBe(true);
    expect(new X509Certificate(reissued).checkPrivateKey(createPrivateKey(await readFile(p.serverKey, 'utf8')))).toBe(true);
    expect(await readFile(p.caCert, 'utf8')).toBe(ca.certPem);
    expect(await readFile(p.caKey, 'utf8')).toBe(ca.keyPem);
    expect(await readFile(p.adminCert, 'utf8')).toBe(adminPem);
  });

  it('re-issues an expired or near-expiry admin cert from the existing CA', async () => {
    const dir = join(work, 'dev-expiry');
    const p = await ensureDevPki(dir, { leafValidityDays: 10 });
    const ca = { certPem: await readFile(p.caCert, 'utf8'), keyPem: await readFile(p.caKey, 'utf8') };
    const adminPem = await readFile(p.adminCert, 'utf8');
    // 5 days later: not yet within the 7-day renewal window? 10-5 = 5 < 7, so renew.
    await ensureDevPki(dir, { now: new Date(Date.now() + 5 * 86_400_000) });
    const renewed = await readFile(p.adminCert, 'utf8');
    expect(renewed).not.toBe(adminPem);
    expect((await opensslVerify(ca, renewed, '-purpose', 'sslclient')).ok).toBe(true);
    expect(await readFile(p.caCert, 'utf8')).toBe(ca.certPem);
  });

  it('re-issues a leaf whose key no longer matches (crash between writes)', async () => {
    const dir = join(work, 'dev-mismatch');
    const p = await ensureDevPki(dir);
    const stray = await selfSignedCertificate({ commonName: 'x', profile: 'server' });
    await writeFile(p.serverKey, stray.keyPem);
    await ensureDevPki(dir);
    const cert = new X509Certificate(await readFile(p.serverCert, 'utf8'));
    expect(cert.checkPrivateKey(createPrivateKey(await readFile(p.serverKey, 'utf8')))).toBe(true);
  });

  it('never regenerates a CA: half-present CA is an error', async () => {
    const dir = join(work, 'dev-half');
    const p = await ensureDevPki(dir);
    const key = await readFile(p.caKey, 'utf8');
    await unlink(p.caCert);
    await expect(ensureDevPki(dir)).rejects.toThrow(/incomplete dev CA/);
    expect(await readFile(p.caKey, 'utf8')).toBe(key);
  });

  it('concurrent first calls agree on one CA', async () => {
    const dir = join(work, 'dev-race');
    const [a, b] = await Promise.all([ensureDevPki(dir), ensureDevPki(dir)]);
    expect(a.caCert).toBe(b.caCert);
    const ca = { certPem: await readFile(a.caCert, 'utf8'), keyPem: await readFile(a.caKey, 'utf8') };
    expect(new X509Certificate(ca.certPem).checkPrivateKey(createPrivateKey(ca.keyPem))).toBe(true);
    expect((await opensslVerify(ca, await readFile(a.adminCert, 'utf8'))).ok).toBe(true);
    for (const [c, k] of [[a.serverCert, a.serverKey], [a.adminCert, a.adminKey]] as const) {
      const cert = new X509Certificate(await readFile(c, 'utf8'));
      expect(cert.checkPrivateKey(createPrivateKey(await readFile(k, 'utf8')))).toBe(true);
    }
  });
});
