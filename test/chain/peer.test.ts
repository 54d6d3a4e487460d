// The chain learns a call's connection (address, verified client certificate) once per
// connection, from the HTTP/2 session it reaches through grpc-js internals (src/chain/peer.ts).
// Should a grpc-js upgrade move them, peer.ts silently falls back to getAuthContext() on every
// call (~70 µs each): these calls, over real TLS and through the chain's public
// ServerInterceptingCall, fail loudly instead.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import { Metadata, Server, ServerCredentials, credentials, makeGenericClientConstructor, status as Status, type ServiceDefinition, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isCachedConnection, type Connection } from '../../src/chain/peer.js';
import { chainInterceptor } from '../../src/chain/step.js';
import { secureContextOptions } from '../../src/daemon/connections.js';
import { createCa, DEV_ADMIN_PRINCIPAL, issueCertificate, type PemPair } from '../../src/pki/index.js';
import { loadIdentity } from '../../src/pki/identity.js';
import { attachCallState, type CallState } from '../../src/rpc/context.js';

const FALLBACK = 'connectionOf fell back to the per-call public methods (getAuthContext() on every call): grpc-js internals moved, see src/chain/peer.ts';

const identity = (value: Buffer) => value;
const definition: ServiceDefinition = {
  echo: { path: '/test.Peer/Echo', requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
};
type EchoClient = { echo: (request: Buffer, metadata: Metadata, callback: (err: ServiceError | null, value?: Buffer) => void) => void; close(): void };
const EchoClient = makeGenericClientConstructor(definition, 'Peer') as unknown as new (target: string, creds: ReturnType<typeof credentials.createSsl>, options: Record<string, string>) => EchoClient;

/** The connection the chain's step saw, call by call. */
const seen: Connection[] = [];

function chainServer(): Server {
  const server = new Server({
    interceptors: [
      chainInterceptor({
        observe: (path, _requestStream, _responseStream, connection) => ({
          begin: (metadata) => {
            const state: CallState = { traceId: 'trace-peer', startedAt: performance.now(), path, peer: connection.peer };
            attachCallState(metadata, state);
            return state;
          },
          end: (status) => status,
        }),
        recover: () => ({ code: Status.INTERNAL, details: 'recovered' }),
        steps: [{ onRequest: (_state, call) => void seen.push(call.connection) }],
      }),
    ],
  });
  server.addService(definition, {
    echo: (call: { request: Buffer }, callback: (err: Error | null, value?: Buffer) => void) => callback(null, call.request),
  });
  return server;
}

let dir: string;
let ca: PemPair;
let client: PemPair;
let server: Server;
let tls: TlsServer;
/** The daemon's way: its own TLS listener hands secured sockets to grpc-js (src/daemon/connections.ts). */
let injectedPort: number;
/** grpc-js's own TLS (bindAsync), as the benchmark's servers use it. */
let boundPort: number;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'peer-test-'));
  ca = await createCa({ commonName: 'Peer Test CA', validityDays: 2 });
  const leaf = await issueCertificate({ ca, profile: 'server', commonName: 'localhost', dnsNames: ['localhost'], validityDays: 2 });
  client = await issueCertificate({ ca, profile: 'client', commonName: 'admin', uris: [DEV_ADMIN_PRINCIPAL], validityDays: 2 });
  const files = { caFile: join(dir, 'ca.pem'), certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') };
  await Promise.all([writeFile(files.caFile, ca.certPem), writeFile(files.certFile, leaf.certPem), writeFile(files.keyFile, leaf.keyPem)]);
  const loaded = loadIdentity(files);

  server = chainServer();
  boundPort = await new Promise<number>((resolve, reject) => {
    const creds = ServerCredentials.createSsl(loaded.ca, [{ private_key: loaded.key, cert_chain: loaded.cert }], true);
    server.bindAsync('127.0.0.1:0', creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
  tls = createTlsServer({ ...secureContextOptions(loaded), ALPNProtocols: ['h2'] });
  tls.on('secureConnection', (socket: TLSSocket) => server.createConnectionInjector(ServerCredentials.createInsecure()).injectConnection(socket));
  await new Promise<void>((resolve) => tls.listen(0, '127.0.0.1', resolve));
  const address = tls.address();
  injectedPort = typeof address === 'object' && address ? address.port : 0;
});

afterAll(async () => {
  server.forceShutdown();
  tls.close();
  await rm(dir, { recursive: true, force: true });
});

function echo(to: EchoClient): Promise<Buffer | undefined> {
  return new Promise((resolve, reject) => to.echo(Buffer.from('hi'), new Metadata(), (err, value) => (err ? reject(err) : resolve(value))));
}

/** Two calls on one channel: the connection each saw. */
async function twoCalls(port: number, withCertificate: boolean): Promise<[Connection, Connection]> {
  const creds = withCertificate ? credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(client.keyPem), Buffer.from(client.certPem)) : credentials.createSsl(Buffer.from(ca.certPem));
  // The address, not the name (which may resolve to ::1), verified as the certificate's name.
  const to = new EchoClient(`127.0.0.1:${port}`, creds, { 'grpc.ssl_target_name_override': 'localhost' });
  try {
    seen.length = 0;
    expect((await echo(to))?.toString()).toBe('hi');
    expect((await echo(to))?.toString()).toBe('hi');
  } finally {
    to.close();
  }
  expect(seen).toHaveLength(2);
  return [seen[0] as Connection, seen[1] as Connection];
}

describe('the per-connection fast path (peer.ts)', () => {
  for (const [how, port] of [
    ['injected by the daemon’s TLS listener', () => injectedPort],
    ['on grpc-js’s own TLS', () => boundPort],
  ] as const) {
    it(`serves a call ${how} from its HTTP/2 session, once per connection, with the verified certificate`, async () => {
      const [first, second] = await twoCalls(port(), true);
      expect(isCachedConnection(first), FALLBACK).toBe(true);
      expect(second, FALLBACK).toBe(first);
      expect(first.ip).toBe('127.0.0.1');
      expect(first.peer).toMatch(/^127\.0\.0\.1:\d+$/);
      expect(first.certificate?.subject.CN).toBe('admin');
      expect(first.certificate?.subjectaltname).toContain(DEV_ADMIN_PRINCIPAL);
    });
  }

  it('takes the fast path without a client certificate too, and reports none', async () => {
    const [first, second] = await twoCalls(injectedPort, false);
    expect(isCachedConnection(first), FALLBACK).toBe(true);
    expect(second).toBe(first);
    expect(first.certificate).toBeUndefined();
  });
});
