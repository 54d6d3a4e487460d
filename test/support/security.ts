// Helpers for the security e2e suites: client certificates for arbitrary principals,
// CRLs, audit and metrics lookups, raw gRPC over a chosen source address.
import 'reflect-metadata';
import { createPrivateKey, webcrypto, X509Certificate } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { connect as http2Connect, constants as h2 } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Metadata, type Client, type ServiceError, status as Status, type StatusObject } from '@grpc/grpc-js';
import * as x509 from '@peculiar/x509';
import { vi } from 'vitest';
import { issueCertificate, type DevPkiPaths } from '../../src/pki/index.js';
import { auditRecords, type ClientPem, type RunningDaemon } from './daemon.js';
import { devCa } from './pki-fixtures.js';

/** A client certificate from the dev CA for `principal` (URI SAN when it is a URI, else CN). */
export async function issueClientFor(pki: DevPkiPaths, principal: string, commonName = principal.split('/').pop() ?? 'client'): Promise<ClientPem & { serial: string }> {
  const pair = await issueCertificate({
    ca: await devCa(pki),
    profile: 'client',
    commonName,
    ...(principal.includes('://') ? { uris: [principal] } : {}),
    validityDays: 2,
  });
  return { cert: pair.certPem, key: pair.keyPem, serial: new X509Certificate(pair.certPem).serialNumber };
}

/** Writes a CRL signed by the dev CA that lists `serials` (hex), and returns its path. */
export async function writeDevCrl(pki: DevPkiPaths, serials: readonly string[], file: string): Promise<string> {
  const ca = await devCa(pki);
  const caCert = new x509.X509Certificate(ca.certPem);
  const keyObject = createPrivateKey(ca.keyPem);
  const der = keyObject.export({ type: 'pkcs8', format: 'der' });
  const ec = keyObject.asymmetricKeyType === 'ec';
  const algorithm = ec ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
  const signingKey = await webcrypto.subtle.importKey('pkcs8', der, algorithm, false, ['sign']);
  const crl = await x509.X509CrlGenerator.create(
    {
      issuer: caCert.subjectName,
      thisUpdate: new Date(Date.now() - 60_000),
      nextUpdate: new Date(Date.now() + 86_400_000),
      entries: serials.map((serialNumber) => ({ serialNumber, revocationDate: new Date(Date.now() - 60_000) })),
      signingAlgorithm: ec ? { name: 'ECDSA', hash: 'SHA-256' } : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      signingKey,
    },
    webcrypto,
  );
  await writeFile(file, crl.toString('pem'), { mode: 0o644 });
  return file;
}

/** The trace id a refused call quotes in its details. */
export function traceIdOf(err: { details: string }): string {
  const id = /trace_id=([^\s)]+)/.exec(err.details)?.[1];
  if (id === undefined) throw new Error(`no trace_id in "${err.details}"`);
  return id;
}

/** The status of a call: OK (0) with empty details on success. */
export async function codeOf(call: Promise<unknown>): Promise<{ code: Status; details: string }> {
  try {
    await call;
    return { code: Status.OK, details: '' };
  } catch (err) {
    return { code: (err as ServiceError).code, details: (err as ServiceError).details };
  }
}

/** The call's failure; throws if the call succeeds. */
export async function rejection(call: Promise<unknown>): Promise<ServiceError> {
  try {
    await call;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error('call succeeded but must have been refused');
}

/** Waits (reads are audited in batches) for an audit record matching `match`, and returns it. */
export async function auditRecord(
  daemon: Pick<RunningDaemon, 'dir'>,
  match: (record: Record<string, unknown>) => boolean,
  timeoutMs = 5000,
): Promise<Record<string, unknown>> {
  return vi.waitFor(
    () => {
      const found = auditRecords(daemon).find(match);
      if (!found) throw new Error('no matching audit record yet');
      return found;
    },
    { timeout: timeoutMs, interval: 25 },
  );
}

/** The audit record of `type` for the call with this trace id. */
export function auditOf(daemon: Pick<RunningDaemon, 'dir'>, type: string, traceId: string): Promise<Record<string, unknown>> {
  return auditRecord(daemon, (r) => r.type === type && r.trace_id === traceId);
}

export async function metricsText(daemon: Pick<RunningDaemon, 'httpAddress'>): Promise<string> {
  const response = await fetch(`http://${daemon.httpAddress}/metrics`);
  return response.text();
}

/** Sum of every sample of `name` whose labels include `labels` (0 if none). */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (match?.[1] !== name) continue;
    const labelText = match[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) sum += Number(match[3]);
  }
  return sum;
}

export interface RawStatus {
  readonly code: Status;
  readonly details: string;
  readonly metadata: Metadata;
}

/** One server-streaming call with identity (de)serializers; resolves with its final status. */
export function rawServerStream(client: Client, path: string, body: Buffer, metadata: Record<string, string> = {}, timeoutMs = 10_000): Promise<RawStatus> {
  const md = new Metadata();
  for (const [key, value] of Object.entries(metadata)) md.set(key, value);
  return new Promise((resolveCall) => {
    const call = client.makeServerStreamRequest<Buffer, Buffer>(path, (v) => v, (v) => v, body, md, { deadline: new Date(Date.now() + timeoutMs) });
    call.on('data', () => undefined);
    call.on('error', () => undefined);
    // Response headers before the status: the call was accepted (a quiet stream such as WatchEvents sends nothing for long).
    call.on('metadata', (metadata: Metadata) => {
      resolveCall({ code: Status.OK, details: 'stream opened', metadata });
      call.cancel();
    });
    call.on('status', (status: StatusObject) => resolveCall({ code: status.code, details: status.details, metadata: status.metadata }));
  });
}

export interface Http2GrpcResult {
  readonly status: number;
  readonly message: string;
}

/**
 * One unary gRPC call over a hand-made TLS + HTTP/2 connection from `localAddress`
 * (grpc-js cannot bind the client side of a connection). The body is an empty message.
 * Without cert and key the call is anonymous; `headers` are sent as given, so they may
 * carry bytes a grpc-js client refuses to send.
 */
export async function grpcFrom(
  daemon: Pick<RunningDaemon, 'grpcAddress'>,
  localAddress: string,
  path: string,
  pem: { ca: Buffer | string; cert?: Buffer | string; key?: Buffer | string },
  headers: Readonly<Record<string, string>> = {},
): Promise<Http2GrpcResult> {
  const [host = '127.0.0.1', port = '0'] = daemon.grpcAddress.split(':');
  const session = http2Connect(`https://${host}:${port}`, {
    createConnection: () =>
      tlsConnect({
        socket: netConnect({ host, port: Number(port), localAddress }),
        host,
        ca: pem.ca,
        cert: pem.cert,
        key: pem.key,
        ALPNProtocols: ['h2'],
      }),
  });
  try {
    return await new Promise<Http2GrpcResult>((resolveCall, reject) => {
      session.once('error', reject);
      const stream = session.request({
        [h2.HTTP2_HEADER_METHOD]: 'POST',
        [h2.HTTP2_HEADER_PATH]: path,
        [h2.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
        te: 'trailers',
        ...headers,
      });
      let received: Record<string, string | string[] | undefined> = {};
      stream.on('response', (h: Record<string, string | string[] | undefined>) => {
        received = { ...h };
      });
      stream.on('trailers', (t: Record<string, string | string[] | undefined>) => {
        received = { ...received, ...t };
      });
      stream.on('data', () => undefined);
      stream.once('error', reject);
      stream.on('close', () => {
        const message = received['grpc-message'];
        resolveCall({ status: Number(received['grpc-status'] ?? -1), message: decodeURIComponent(typeof message === 'string' ? message : '') });
      });
      stream.end(Buffer.alloc(5)); // uncompressed, zero-length message
    });
  } finally {
    session.close();
  }
}

/** Sends SIGHUP and returns the reload's outcome record (applied or refused), waiting as long as `timeoutMs`. */
export async function reloadDaemon(daemon: RunningDaemon, timeoutMs = 90_000): Promise<Record<string, unknown>> {
  const seen = daemon.logRecords().length;
  daemon.process.kill('SIGHUP');
  return vi.waitFor(
    () => {
      const record = daemon.logRecords().slice(seen).find((r) => r.msg === 'reload refused; keeping the running configuration and certificates' || r.msg === 'reloaded configuration, certificates and CRL');
      if (!record) throw new Error('no reload outcome yet');
      return record;
    },
    { timeout: timeoutMs, interval: 50 },
  );
}
