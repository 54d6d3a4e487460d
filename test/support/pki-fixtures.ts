// Certificates the daemon must refuse, made with src/pki and written next to a dev PKI.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  DEV_ADMIN_PRINCIPAL,
  createCa,
  issueCertificate,
  selfSignedCertificate,
  type DevPkiPaths,
  type PemPair,
} from '../../src/pki/index.js';

const DAY_MS = 24 * 60 * 60 * 1000;

/** A cert/key pair as PEM text and as the files it was written to. */
export interface CertFixture {
  readonly cert: string;
  readonly key: string;
  readonly certFile: string;
  readonly keyFile: string;
}

async function write(dir: string, name: string, pair: PemPair): Promise<CertFixture> {
  const certFile = join(dir, `${name}-cert.pem`);
  const keyFile = join(dir, `${name}-key.pem`);
  await writeFile(certFile, pair.certPem, { mode: 0o644 });
  await writeFile(keyFile, pair.keyPem, { mode: 0o600 });
  return { cert: pair.certPem, key: pair.keyPem, certFile, keyFile };
}

/** The dev CA as a pair, to issue more certificates from it. */
export async function devCa(pki: DevPkiPaths): Promise<PemPair> {
  const [certPem, keyPem] = await Promise.all([readFile(pki.caCert, 'utf8'), readFile(pki.caKey, 'utf8')]);
  return { certPem, keyPem };
}

/**
 * A CA that is not the daemon's, and a client certificate from it that names the
 * admin principal (CN admin, URI SAN spiffe://debvisor/admin/admin).
 */
export async function writeForeignCaClient(dir: string): Promise<{ ca: CertFixture; client: CertFixture }> {
  const ca = await createCa({ commonName: 'Foreign Test CA', validityDays: 30 });
  const client = await issueCertificate({ ca, profile: 'client', commonName: 'admin', uris: [DEV_ADMIN_PRINCIPAL], validityDays: 30 });
  return { ca: await write(dir, 'foreign-ca', ca), client: await write(dir, 'foreign-client', client) };
}

/** A self-signed leaf naming the admin principal: the classic impersonation attempt. */
export async function writeSelfSignedAdmin(dir: string): Promise<CertFixture> {
  const pair = await selfSignedCertificate({ profile: 'client', commonName: 'admin', uris: [DEV_ADMIN_PRINCIPAL], validityDays: 30 });
  return write(dir, 'self-signed-admin', pair);
}

/** From the real dev CA, naming the admin principal, but with EKU serverAuth only (no clientAuth). */
export async function writeServerAuthOnlyClient(pki: DevPkiPaths, dir: string): Promise<CertFixture> {
  const pair = await issueCertificate({
    ca: await devCa(pki),
    profile: 'client',
    commonName: 'admin',
    uris: [DEV_ADMIN_PRINCIPAL],
    extendedKeyUsages: ['serverAuth'],
    validityDays: 30,
  });
  return write(dir, 'server-auth-only', pair);
}

/** From the real dev CA, naming the admin principal, valid from 10 days ago until yesterday. */
export async function writeExpiredClient(pki: DevPkiPaths, dir: string, now = Date.now()): Promise<CertFixture> {
  const pair = await issueCertificate({
    ca: await devCa(pki),
    profile: 'client',
    commonName: 'admin',
    uris: [DEV_ADMIN_PRINCIPAL],
    notBefore: new Date(now - 10 * DAY_MS),
    notAfter: new Date(now - DAY_MS),
  });
  return write(dir, 'expired-client', pair);
}

export interface RefusedCertificates {
  readonly foreignCa: CertFixture;
  readonly foreignClient: CertFixture;
  readonly selfSignedAdmin: CertFixture;
  readonly serverAuthOnly: CertFixture;
  readonly expired: CertFixture;
}

/** Every certificate the daemon must refuse, written into `dir`. */
export async function writeRefusedCertificates(pki: DevPkiPaths, dir: string): Promise<RefusedCertificates> {
  const [foreign, selfSignedAdmin, serverAuthOnly, expired] = await Promise.all([
    writeForeignCaClient(dir),
    writeSelfSignedAdmin(dir),
    writeServerAuthOnlyClient(pki, dir),
    writeExpiredClient(pki, dir),
  ]);
  return { foreignCa: foreign.ca, foreignClient: foreign.client, selfSignedAdmin, serverAuthOnly, expired };
}
