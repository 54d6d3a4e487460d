// Shared by the test/e2e/certs-*.test.ts suites: a PKI the test controls (so the
// daemon can start on a short-lived certificate), probes of the certificate a new
// TLS handshake presents, and metric/log readers.
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  describeCertificate,
  ensureDevPki,
  issueCertificate,
  writeLeafFiles,
  type DevPkiPaths,
  type PemPair,
} from '../../src/pki/index.js';
import type { RunningDaemon } from '../support/daemon.js';

export const SECOND = 1000;
export const DAY_MS = 86_400_000;
/** Rate limits out of the way of load tests. */
export const NO_RATE_LIMITS = { per_role_per_minute: { admin: 100_000_000 }, default_per_minute: 100_000_000, global_per_minute: 100_000_000 };

export async function caOf(pki: DevPkiPaths): Promise<PemPair> {
  const [certPem, keyPem] = await Promise.all([readFile(pki.caCert, 'utf8'), readFile(pki.caKey, 'utf8')]);
  return { certPem, keyPem };
}

/** A server pair like the dev one (CN localhost, DNS:localhost, IP:127.0.0.1) with the given validity. */
export async function serverPair(pki: DevPkiPaths, validity: { notBefore?: Date; notAfter?: Date; validityDays?: number }): Promise<PemPair> {
  return issueCertificate({ ca: await caOf(pki), profile: 'server', commonName: 'localhost', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'], ...validity });
}

/** A dev PKI in `dir` whose server certificate is replaced by `pair` (written key first). */
export async function pkiWithServer(dir: string, pair?: (pki: DevPkiPaths) => Promise<PemPair>): Promise<DevPkiPaths> {
  const pki = await ensureDevPki(join(dir, 'own-pki'));
  if (pair) await writeLeafFiles(pki.serverCert, pki.serverKey, await pair(pki));
  return pki;
}

/** The tls section pointing the daemon at `pki`. */
export function tlsFor(pki: DevPkiPaths, renewal: Record<string, unknown> = {}): Record<string, unknown> {
  return { ca_file: pki.caCert, cert_file: pki.serverCert, key_file: pki.serverKey, renewal };
}

export function serialOfPem(pem: string | Buffer): string {
  return new X509Certificate(pem).serialNumber.toUpperCase();
}

export async function serialOfFile(file: string): Promise<string> {
  return serialOfPem(await readFile(file));
}

/**
 * The serial of the certificate a NEW TLS handshake gets, verified against `caPem`
 * (chain and the 127.0.0.1 SAN). Rejects if the handshake fails.
 */
export function servedSerial(address: string, caPem: string | Buffer, timeoutMs = 3000): Promise<string> {
  const index = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address.slice(0, index), port: Number(address.slice(index + 1)), ca: caPem, ALPNProtocols: ['h2'], timeout: timeoutMs });
    socket.once('secureConnect', () => {
      const serial = socket.getPeerCertificate().serialNumber.toUpperCase();
      socket.destroy();
      resolve(serial);
    });
    socket.once('timeout', () => {
      socket.destroy();
      reject(new Error('TLS handshake timed out'));
    });
    socket.once('error', reject);
  });
}

/** Polls servedSerial until it returns `serial`; resolves with the ms it took. */
export async function waitForServedSerial(address: string, caPem: string | Buffer, serial: string, timeoutMs = 5000): Promise<number> {
  const started = Date.now();
  let last = '';
  while (Date.now() - started < timeoutMs) {
    last = await servedSerial(address, caPem).catch((err: unknown) => `error: ${(err as Error).message}`);
    if (last === serial) return Date.now() - started;
    await sleep(20);
  }
  throw new Error(`served serial is still ${last}, expected ${serial} after ${timeoutMs} ms`);
}

/** The value of one sample of the daemon's /metrics, or undefined. */
export async function metricValue(daemon: Pick<RunningDaemon, 'httpAddress'>, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const text = await (await fetch(`http://${daemon.httpAddress}/metrics`)).text();
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l): [string, string] => [l[1] ?? '', l[2] ?? '']));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[3]);
  }
  return undefined;
}

export interface Published {
  serial: string;
  source: string;
}

/** 'published new TLS certificate' log records of the daemon, oldest first. */
export function publishedCertificates(daemon: Pick<RunningDaemon, 'logRecords'>): Published[] {
  return daemon
    .logRecords()
    .filter((r) => r.msg === 'published new TLS certificate')
    .map((r) => ({ serial: String(r.serial).toUpperCase(), source: String(r.source) }));
}

export { describeCertificate };
