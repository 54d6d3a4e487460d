// The daemon's own client-certificate verification: it is the gate, because the port
// requests but does not require a client certificate.
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthenticator, parseSubjectAltNames } from '../../src/authn/x509.js';
import { TrustBundle } from '../../src/pki/trust.js';
import { createCa, issueCertificate, selfSignedCertificate, type PemPair } from '../../src/pki/index.js';
import { reasonOf } from './unauthenticated.js';

/** What grpc-js hands the identity step: Node's parsed peer certificate. */
function peerOf(pem: string): PeerCertificate {
  const cert = new X509Certificate(pem);
  return { raw: cert.raw, fingerprint256: cert.fingerprint256 } as PeerCertificate;
}

describe('CertificateAuthenticator', () => {
  let ca: PemPair;
  let auth: CertificateAuthenticator;
  const dir = mkdtempSync(join(tmpdir(), 'debvisor-x509-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  beforeAll(async () => {
    ca = await createCa({ commonName: 'Test Root' });
    auth = new CertificateAuthenticator(TrustBundle.fromPem(ca.certPem));
  });

  it('takes the principal from the URI SAN, then the DNS SAN, then the CN', async () => {
    const uri = await issueCertificate({ ca, profile: 'client', commonName: 'cn', dnsNames: ['dns.example'], uris: ['spiffe://debvisor/panel/web-panel'] });
    const dns = await issueCertificate({ ca, profile: 'client', commonName: 'cn', dnsNames: ['dns.example'] });
    const cn = await issueCertificate({ ca, profile: 'client', commonName: 'web-panel' });
    expect(auth.authenticate(peerOf(uri.certPem)).id).toBe('spiffe://debvisor/panel/web-panel');
    expect(auth.authenticate(peerOf(dns.certPem)).id).toBe('dns.example');
    expect(auth.authenticate(peerOf(cn.certPem)).id).toBe('web-panel');
  });

  it('refuses a certificate with several URI SANs (SPIFFE: exactly one), even one that is the admin', async () => {
    const two = await issueCertificate({ ca, profile: 'client', commonName: 'cn', uris: ['spiffe://debvisor/ci/runner', 'spiffe://debvisor/admin/admin'] });
    expect(reasonOf(() => auth.authenticate(peerOf(two.certPem)))).toBe(
      'client certificate has 2 URI SANs; exactly one is allowed (SPIFFE): spiffe://debvisor/ci/runner, spiffe://debvisor/admin/admin',
    );
  });

  it('refuses a certificate whose principal is in the user: or group: namespace of impersonated identities', async () => {
    const cn = await issueCertificate({ ca, profile: 'client', commonName: 'user:alice' });
    const uri = await issueCertificate({ ca, profile: 'client', commonName: 'x', uris: ['group:operators'] });
    expect(reasonOf(() => auth.authenticate(peerOf(cn.certPem)))).toBe(
      'client certificate principal "user:alice" is in the user: namespace, which is reserved for impersonated users and groups',
    );
    expect(reasonOf(() => auth.authenticate(peerOf(uri.certPem)))).toMatch(/^client certificate principal "group:operators" is in the group: namespace/);
    // Only the principal counts: a CN that the URI SAN overrides is harmless.
    const named = await issueCertificate({ ca, profile: 'client', commonName: 'user:alice', uris: ['spiffe://debvisor/panel/web-panel'] });
    expect(auth.authenticate(peerOf(named.certPem)).id).toBe('spiffe://debvisor/panel/web-panel');
  });

  it('refuses a self-signed certificate naming a real principal', async () => {
    const forged = await selfSignedCertificate({ commonName: 'admin', uris: ['spiffe://debvisor/admin/admin'], profile: 'client' });
    expect(reasonOf(() => auth.authenticate(peerOf(forged.certPem)))).toMatch(/not issued by a trusted CA/);
  });

  it('refuses a certificate from another CA', async () => {
    const other = await createCa({ commonName: 'Test Root' }); // same name, different key
    const cert = await issueCertificate({ ca: other, profile: 'client', commonName: 'admin' });
    expect(reasonOf(() => auth.authenticate(peerOf(cert.certPem)))).toMatch(/not issued by a trusted CA/);
  });

  it('refuses a certificate without EKU clientAuth', async () => {
    const server = await issueCertificate({ ca, profile: 'server', commonName: 'localhost', dnsNames: ['localhost'] });
    const none = await issueCertificate({ ca, profile: 'client', commonName: 'x', extendedKeyUsages: [] });
    expect(reasonOf(() => auth.authenticate(peerOf(server.certPem)))).toMatch(/clientAuth/);
    expect(reasonOf(() => auth.authenticate(peerOf(none.certPem)))).toMatch(/clientAuth/);
  });

  it('refuses expired and not-yet-valid certificates, re-checking the cached dates per call', async () => {
    const expired = await issueCertificate({ ca, profile: 'client', commonName: 'old', notBefore: new Date(Date.now() - 10 * 86400e3), notAfter: new Date(Date.now() - 86400e3) });
    expect(reasonOf(() => auth.authenticate(peerOf(expired.certPem)))).toMatch(/validity/);
    const shortLived = await issueCertificate({ ca, profile: 'client', commonName: 'brief', validityDays: 1 });
    const peer = peerOf(shortLived.certPem);
    expect(auth.authenticate(peer).id).toBe('brief');
    expect(reasonOf(() => auth.authenticate(peer, Date.now() + 3 * 86400e3))).toMatch(/validity/);
  });

  it('accepts a chain through an intermediate CA in the bundle', () => {
    writeFileSync(join(dir, 'root.pem'), ca.certPem);
    writeFileSync(join(dir, 'root.key'), ca.keyPem);
    writeFileSync(join(dir, 'ext.cnf'), 'basicConstraints=critical,CA:true,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n');
    const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    openssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'int.key');
    openssl('req', '-new', '-key', 'int.key', '-subj', '/CN=Test Intermediate', '-out', 'int.csr');
    openssl('x509', '-req', '-in', 'int.csr', '-CA', 'root.pem', '-CAkey', 'root.key', '-CAcreateserial', '-days', '30', '-extfile', 'ext.cnf', '-out', 'int.pem');
    const intermediate = { certPem: readFileSync(join(dir, 'int.pem'), 'utf8'), keyPem: readFileSync(join(dir, 'int.key'), 'utf8') };
    return issueCertificate({ ca: intermediate, profile: 'client', commonName: 'via-intermediate' }).then((leaf) => {
      const withIntermediate = new CertificateAuthenticator(TrustBundle.fromPem(ca.certPem + intermediate.certPem));
      expect(withIntermediate.authenticate(peerOf(leaf.certPem)).id).toBe('via-intermediate');
      // Root only: the intermediate is unknown, so the chain cannot be built.
      expect(reasonOf(() => auth.authenticate(peerOf(leaf.certPem)))).toMatch(/not issued by a trusted CA/);
      // Intermediate only, no root: a partial chain is not trusted.
      const partial = new CertificateAuthenticator(TrustBundle.fromPem(intermediate.certPem));
      expect(reasonOf(() => partial.authenticate(peerOf(leaf.certPem)))).toMatch(/trusted root/);
    });
  });

  it('forgets cached verifications when the CA bundle is replaced', async () => {
    const cert = await issueCertificate({ ca, profile: 'client', commonName: 'rotating' });
    const local = new CertificateAuthenticator(TrustBundle.fromPem(ca.certPem));
    expect(local.authenticate(peerOf(cert.certPem)).id).toBe('rotating');
    const otherCa = await createCa({ commonName: 'New Root' });
    local.setTrust(TrustBundle.fromPem(otherCa.certPem));
    expect(reasonOf(() => local.authenticate(peerOf(cert.certPem)))).toMatch(/not issued by a trusted CA/);
  });

  it('rejects a CA bundle that holds a leaf certificate', async () => {
    const leaf = await issueCertificate({ ca, profile: 'client', commonName: 'leaf' });
    expect(() => TrustBundle.fromPem(leaf.certPem)).toThrow(/not a CA certificate/);
    expect(() => TrustBundle.fromPem('garbage')).toThrow(/no PEM certificate/);
  });
});

describe('parseSubjectAltNames', () => {
  it('reads Node-rendered SANs, including JSON-quoted values', () => {
    expect(parseSubjectAltNames('DNS:a.example, URI:spiffe://debvisor/x/y, IP Address:127.0.0.1')).toEqual({ uri: ['spiffe://debvisor/x/y'], dns: ['a.example'] });
    expect(parseSubjectAltNames('URI:"spiffe://d/a, b", DNS:z')).toEqual({ uri: ['spiffe://d/a, b'], dns: ['z'] });
    expect(parseSubjectAltNames(undefined)).toEqual({ uri: [], dns: [] });
  });
});
