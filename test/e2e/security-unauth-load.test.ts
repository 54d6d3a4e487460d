// End-to-end: unauthenticated load against the real daemon (issue 17, "Unauthenticated
// load"). Reflection needs a caller by default; health and reflection are limited per source
// address; connections are capped per source and in all; a TLS handshake and a connection
// that never completes an authenticated call are timed out. Attackers bind other loopback
// addresses (127.0.0.2 and up) so the per-source limits can be told apart.
import { connect as http2Connect, constants as h2, type ClientHttp2Session, type ClientHttp2Stream } from 'node:http2';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { status as Status, type Client, type ClientDuplexStream, type ServiceError } from '@grpc/grpc-js';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { REPO_ROOT, adminPem, credentialsFor, startDaemon, type PemFiles, type RunningDaemon } from '../support/daemon.js';
import { serviceConstructor } from '../support/health.js';
import { metricSum, metricsText } from '../support/security.js';
import { REFUSALS_BEFORE_CLOSE } from '../../src/daemon/connections.js';
import { LEGIT_CONFIG, legitClient, legitLatencies, underLoad } from '../support/unauth-load.js';

const REFLECTION_PROTO = join(REPO_ROOT, 'proto/grpc/reflection/v1/reflection.proto');
const HEALTH_CHECK = '/grpc.health.v1.Health/Check';
const REFLECTION_INFO = '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo';

interface ReflectionClient extends Client {
  ServerReflectionInfo(): ClientDuplexStream<{ list_services: string }, { list_services_response?: { service: { name: string }[] } }>;
}

const clients: { close(): void }[] = [];
const sockets = new Set<Socket>();
const sessions = new Set<ClientHttp2Session>();

afterAll(() => {
  for (const client of clients) client.close();
  for (const socket of sockets) socket.destroy();
  for (const session of sessions) session.destroy();
});

/** Lists the services over reflection as `identity` (null: no client certificate). */
async function listServices(daemon: RunningDaemon, identity: PemFiles | null): Promise<string[]> {
  const Reflection = serviceConstructor(REFLECTION_PROTO, ['grpc', 'reflection', 'v1', 'ServerReflection'], true);
  const client = new Reflection(daemon.grpcAddress, await credentialsFor(daemon.pki, identity), { 'grpc.use_local_subchannel_pool': 1 }) as unknown as ReflectionClient;
  clients.push(client);
  const stream = client.ServerReflectionInfo();
  try {
    const response = await new Promise<{ list_services_response?: { service: { name: string }[] } }>((resolve, reject) => {
      stream.once('data', resolve);
      stream.once('error', reject);
      stream.write({ list_services: '' });
    });
    return (response.list_services_response?.service ?? []).map((service) => service.name);
  } finally {
    stream.end();
  }
}

function portOf(daemon: RunningDaemon): number {
  return daemon.grpcPort;
}

/** A TLS connection from `source`, optionally with a client certificate; resolves once secured. */
function tlsFrom(daemon: RunningDaemon, source: string, pem: { ca: Buffer; cert?: Buffer; key?: Buffer }): Promise<TLSSocket> {
  const socket = tlsConnect({
    socket: netConnect({ host: '127.0.0.1', port: portOf(daemon), localAddress: source }),
    ca: pem.ca,
    ...(pem.cert && pem.key ? { cert: pem.cert, key: pem.key } : {}),
    servername: 'localhost',
    ALPNProtocols: ['h2'],
  });
  sockets.add(socket);
  socket.on('error', () => undefined);
  return new Promise((resolve, reject) => {
    socket.once('secureConnect', () => resolve(socket));
    socket.once('close', () => reject(new Error(`connection from ${source} closed before its TLS handshake finished`)));
  });
}

/** A plain TCP connection from `source`. */
function tcpFrom(daemon: RunningDaemon, source: string): Promise<Socket> {
  const socket = netConnect({ host: '127.0.0.1', port: portOf(daemon), localAddress: source });
  sockets.add(socket);
  socket.on('error', () => undefined);
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(socket));
    socket.once('close', () => reject(new Error(`connection from ${source} closed before it connected`)));
  });
}

/** Resolves when the socket closes; rejects if it is still open after `ms`. */
function closedWithin(socket: Socket, ms: number): Promise<number> {
  const started = performance.now();
  if (socket.destroyed || socket.closed) return Promise.resolve(0);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket still open after ${ms} ms`)), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(performance.now() - started);
    });
  });
}

/** An HTTP/2 session over TLS from `source` (anonymous unless a certificate is given). */
async function sessionFrom(daemon: RunningDaemon, source: string, pem: { ca: Buffer; cert?: Buffer; key?: Buffer }): Promise<ClientHttp2Session> {
  const socket = await tlsFrom(daemon, source, pem);
  const session = http2Connect(`https://localhost:${portOf(daemon)}`, { createConnection: () => socket });
  sessions.add(session);
  session.on('error', () => undefined);
  return session;
}

type Headers = Record<string, string | string[] | undefined>;

/** Opens a gRPC stream on `session` to `path`. */
function openStream(session: ClientHttp2Session, path: string): ClientHttp2Stream {
  return session.request({
    [h2.HTTP2_HEADER_METHOD]: 'POST',
    [h2.HTTP2_HEADER_PATH]: path,
    [h2.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
    te: 'trailers',
  });
}

/** The grpc-status the stream ends with (-1 if none): at the trailers, even while our side is still open. */
function statusOf(stream: ClientHttp2Stream): Promise<number> {
  return new Promise((resolve) => {
    let code = -1;
    stream.on('response', (headers: Headers) => {
      if (headers['grpc-status'] === undefined) return;
      code = Number(headers['grpc-status']);
      resolve(code); // a trailers-only answer
    });
    stream.on('trailers', (trailers: Headers) => {
      if (trailers['grpc-status'] !== undefined) code = Number(trailers['grpc-status']);
      resolve(code);
    });
    stream.on('data', () => undefined);
    stream.on('error', () => undefined);
    stream.on('close', () => resolve(code));
  });
}

/** `body` as one uncompressed gRPC message frame. */
function frame(body: Buffer): Buffer {
  const framed = Buffer.alloc(5 + body.length);
  framed.writeUInt32BE(body.length, 1);
  body.copy(framed, 5);
  return framed;
}

/** One gRPC call on `session` with one request message (`body`); resolves with its grpc-status. */
function grpcCall(session: ClientHttp2Session, path: string, body: Buffer = Buffer.alloc(0)): Promise<number> {
  const stream = openStream(session, path);
  const status = statusOf(stream);
  stream.end(frame(body));
  return status;
}

/** `count` calls, `parallel` at a time; the status codes seen, with counts. */
async function flood(session: ClientHttp2Session, path: string, count: number, body?: Buffer, parallel = 20): Promise<Map<number, number>> {
  const codes = new Map<number, number>();
  let left = count;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (left-- > 0) {
        const code = await grpcCall(session, path, body);
        codes.set(code, (codes.get(code) ?? 0) + 1);
      }
    }),
  );
  return codes;
}

/** A busy 2-core machine can take well over 15 s to start a daemon. */
const READY_MS = 90_000;
// Tests here start daemons, wait on the daemon's timeouts and run bounded loads.
vi.setConfig({ testTimeout: 180_000, hookTimeout: 180_000 });
const CALLS = 200;
/**
 * The target is a p99 under 200 ms; bench/unauth-load.ts measures that against a
 * baseline in the same run. This test asserts the property on a loose bound that holds on
 * a busy 2-core CI machine, where the p99 WITHOUT any load can already exceed 200 ms (measured
 * 116-278 ms at load average 23): the client is never starved (before the fix: 5 s timeouts),
 * and no call fails.
 */
const P99_BOUND_MS = 2000;

/** ServerReflectionRequest { list_services = "" }. */
const LIST_SERVICES = Buffer.from([0x3a, 0x00]);

describe('reflection access (server.reflection)', () => {
  let daemon: RunningDaemon;
  let admin: PemFiles;
  beforeAll(async () => {
    daemon = await startDaemon({ readyTimeoutMs: READY_MS });
    admin = await adminPem(daemon.pki);
  });
  afterAll(async () => {
    await daemon.cleanup();
  });

  it('refuses an anonymous caller by default (UNAUTHENTICATED) and serves an mTLS caller', async () => {
    const err = await listServices(daemon, null).then(
      () => undefined,
      (e: unknown) => e as ServiceError,
    );
    expect(err?.code).toBe(Status.UNAUTHENTICATED);
    expect(await listServices(daemon, admin)).toContain('debvisor.v1.VmService');
  });

  it('serves anyone with server.reflection: anonymous (set by environment)', async () => {
    const open = await startDaemon({ readyTimeoutMs: READY_MS, env: { DEBVISOR_RPCD_SERVER_REFLECTION: 'anonymous' } });
    try {
      expect(await listServices(open, null)).toContain('debvisor.v1.VmService');
    } finally {
      await open.cleanup();
    }
  });

  it('does not serve reflection at all with server.reflection: off (UNIMPLEMENTED, even for an admin)', async () => {
    const off = await startDaemon({ readyTimeoutMs: READY_MS, config: { server: { reflection: 'off' } } });
    try {
      const err = await listServices(off, await adminPem(off.pki)).then(
        () => undefined,
        (e: unknown) => e as ServiceError,
      );
      expect(err?.code).toBe(Status.UNIMPLEMENTED);
    } finally {
      await off.cleanup();
    }
  });
});

describe('per-source rate limit of health and reflection', () => {
  let daemon: RunningDaemon;
  let admin: PemFiles;
  beforeAll(async () => {
    daemon = await startDaemon({ readyTimeoutMs: READY_MS, config: { server: { reflection: 'anonymous' }, rate_limit: { anonymous_per_source_per_minute: 60 } } });
    admin = await adminPem(daemon.pki);
  });
  afterAll(async () => {
    await daemon.cleanup();
  });

  /** What a flood may see: served, refused, or cut off (no status) when the daemon resets the connection. */
  const ALLOWED_FLOOD_CODES = new Set<number>([Status.OK, Status.RESOURCE_EXHAUSTED, -1]);

  /** Waits until `session` is closed by the daemon. */
  function closedSession(session: ClientHttp2Session): Promise<void> {
    if (session.closed || session.destroyed) return Promise.resolve();
    return new Promise((resolve) => session.once('close', () => resolve()));
  }

  it('a health flood from one source gets RESOURCE_EXHAUSTED, its connection is closed, and another source is still served', async () => {
    const attacker = await sessionFrom(daemon, '127.0.0.2', { ca: admin.ca });
    const closed = closedSession(attacker);
    const codes = await flood(attacker, HEALTH_CHECK, 200);
    // 60 per minute with a 6-call burst: a few pass, then refusals; after REFUSALS_BEFORE_CLOSE
    // the daemon resets the connection, and what was still in flight gets no status (-1).
    expect(codes.get(Status.RESOURCE_EXHAUSTED) ?? 0).toBeGreaterThan(0);
    expect([...codes.keys()].every((code) => ALLOWED_FLOOD_CODES.has(code))).toBe(true);
    await closed;
    const metrics = await metricsText(daemon);
    expect(metricSum(metrics, 'rpc_connections_closed_total', { reason: 'source_rate_limited' })).toBeGreaterThanOrEqual(1);
    expect(metricSum(metrics, 'rate_limit_violations_total', { principal: 'anonymous_per_source' })).toBeGreaterThanOrEqual(REFUSALS_BEFORE_CLOSE);
    // The limit is the source's, not the connection's: a new connection is refused as well.
    const again = await sessionFrom(daemon, '127.0.0.2', { ca: admin.ca });
    expect(await grpcCall(again, HEALTH_CHECK)).toBe(Status.RESOURCE_EXHAUSTED);
    const bystander = await sessionFrom(daemon, '127.0.0.3', { ca: admin.ca });
    expect(await grpcCall(bystander, HEALTH_CHECK)).toBe(Status.OK);
  });

  it('a reflection flood, even inside one stream, gets RESOURCE_EXHAUSTED while another source is still served', async () => {
    const attacker = await sessionFrom(daemon, '127.0.0.4', { ca: admin.ca });
    const codes = await flood(attacker, REFLECTION_INFO, 200, LIST_SERVICES);
    expect(codes.get(Status.RESOURCE_EXHAUSTED) ?? 0).toBeGreaterThan(0);
    expect([...codes.keys()].every((code) => ALLOWED_FLOOD_CODES.has(code))).toBe(true);
    await closedSession(attacker);

    // Many requests in one bidi stream (a new connection): each message costs a cell, so the stream is ended.
    const again = await sessionFrom(daemon, '127.0.0.16', { ca: admin.ca });
    const stream = openStream(again, REFLECTION_INFO);
    const status = statusOf(stream);
    const message = frame(LIST_SERVICES);
    for (let i = 0; i < 100; i++) stream.write(message);
    expect(await status).toBe(Status.RESOURCE_EXHAUSTED);
    stream.close();

    const bystander = await sessionFrom(daemon, '127.0.0.5', { ca: admin.ca });
    expect(await grpcCall(bystander, REFLECTION_INFO, LIST_SERVICES)).toBe(Status.OK);
  });

  it('never closes a connection that completed an authenticated call, however much it is refused', async () => {
    const panel = await sessionFrom(daemon, '127.0.0.17', admin);
    expect(await grpcCall(panel, '/debvisor.v1.AccessService/WhoAmI')).toBe(Status.OK);
    const codes = await flood(panel, HEALTH_CHECK, 200);
    expect(codes.get(Status.RESOURCE_EXHAUSTED) ?? 0).toBeGreaterThan(150);
    expect(codes.has(-1)).toBe(false);
    expect(panel.closed || panel.destroyed).toBe(false);
    expect(await grpcCall(panel, '/debvisor.v1.AccessService/WhoAmI')).toBe(Status.OK);
  });
});

describe('connection caps and timeouts', () => {
  const PER_SOURCE = 4;
  const GLOBAL = 10;
  let daemon: RunningDaemon;
  let admin: PemFiles;
  beforeAll(async () => {
    // Generous timeouts here, so the caps are tested with every connection surely still open.
    daemon = await startDaemon({
      readyTimeoutMs: READY_MS,
      config: { server: { max_connections_per_source: PER_SOURCE, max_connections: GLOBAL, handshake_timeout_seconds: 600, first_call_timeout_seconds: 600 } },
    });
    admin = await adminPem(daemon.pki);
  });
  afterAll(async () => {
    await daemon.cleanup();
  });

  it('refuses the connection over the per-source cap at accept; other sources still connect', async () => {
    const held = await Promise.all(Array.from({ length: PER_SOURCE }, () => tlsFrom(daemon, '127.0.0.6', admin)));
    await expect(tlsFrom(daemon, '127.0.0.6', admin)).rejects.toThrow(/closed before its TLS handshake/);
    // A closed connection frees its place.
    held[0]?.destroy();
    await vi.waitFor(() => tlsFrom(daemon, '127.0.0.6', admin), { timeout: 30_000, interval: 100 });
    const other = await tlsFrom(daemon, '127.0.0.7', admin);
    expect(other.authorized).toBe(true);
    for (const socket of held) socket.destroy();
    expect(metricSum(await metricsText(daemon), 'rpc_connections_refused_total', { reason: 'source_cap' })).toBeGreaterThanOrEqual(1);
    for (const socket of sockets) socket.destroy();
    await vi.waitFor(
      async () => {
        expect(metricSum(await metricsText(daemon), 'rpc_connections_open')).toBe(0);
      },
      { timeout: 30_000, interval: 100 },
    );
  });

  it('refuses connections over the global cap, whatever their source', async () => {
    // GLOBAL connections from sources that each stay under the per-source cap; raw TCP counts as well.
    const sources = ['127.0.0.8', '127.0.0.9', '127.0.0.10'];
    const held: Socket[] = [];
    for (let i = 0; i < GLOBAL; i++) held.push(await tcpFrom(daemon, sources[i % sources.length] as string));
    await vi.waitFor(
      async () => {
        expect(metricSum(await metricsText(daemon), 'rpc_connections_open')).toBe(GLOBAL);
      },
      { timeout: 30_000, interval: 100 },
    );
    await expect(tlsFrom(daemon, '127.0.0.11', admin)).rejects.toThrow(/closed before its TLS handshake/);
    expect(metricSum(await metricsText(daemon), 'rpc_connections_refused_total', { reason: 'global_cap' })).toBeGreaterThanOrEqual(1);
    for (const socket of held) socket.destroy();
    await vi.waitFor(() => tlsFrom(daemon, '127.0.0.11', admin), { timeout: 30_000, interval: 100 });
  });
});

describe('handshake and idle timeouts', () => {
  let daemon: RunningDaemon;
  let admin: PemFiles;
  beforeAll(async () => {
    daemon = await startDaemon({ readyTimeoutMs: READY_MS, config: { server: { handshake_timeout_seconds: 1, first_call_timeout_seconds: 2 } } });
    admin = await adminPem(daemon.pki);
  });
  afterAll(async () => {
    await daemon.cleanup();
  });

  it('closes a half-open TLS handshake after the handshake timeout', async () => {
    const socket = await tcpFrom(daemon, '127.0.0.12');
    socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); // the start of a ClientHello, then nothing
    // Node's default would keep it for 120 s.
    await closedWithin(socket, 60_000);
    await vi.waitFor(
      async () => {
        expect(metricSum(await metricsText(daemon), 'rpc_connections_closed_total', { reason: 'handshake_timeout' })).toBeGreaterThanOrEqual(1);
      },
      { timeout: 30_000, interval: 100 },
    );
  });

  it('closes a secured connection that never completes a call after the idle timeout', async () => {
    const idle = await tlsFrom(daemon, '127.0.0.13', { ca: admin.ca });
    const elapsed = await closedWithin(idle, 60_000);
    // Not before the timeout (2 s), measured from after the handshake.
    expect(elapsed).toBeGreaterThanOrEqual(1500);
    expect(metricSum(await metricsText(daemon), 'rpc_connections_closed_total', { reason: 'idle_before_first_call' })).toBeGreaterThanOrEqual(1);
  });

  it('keeps a connection that completed an authenticated call, and one with an anonymous call in flight', async () => {
    const used = await sessionFrom(daemon, '127.0.0.14', admin);
    expect(await grpcCall(used, '/debvisor.v1.AccessService/WhoAmI')).toBe(Status.OK);
    // Anonymous: a health check alone does not establish the connection.
    const anonymous = await sessionFrom(daemon, '127.0.0.15', { ca: admin.ca });
    expect(await grpcCall(anonymous, HEALTH_CHECK)).toBe(Status.OK);
    const anonymousClosed = new Promise<void>((resolve) => anonymous.once('close', () => resolve()));
    await anonymousClosed;
    // By now the idle timeout has passed for `used` as well: it still serves.
    expect(used.closed || used.destroyed).toBe(false);
    expect(await grpcCall(used, '/debvisor.v1.AccessService/WhoAmI')).toBe(Status.OK);
  });
});

describe('a legitimate mTLS client under unauthenticated load', () => {
  let daemon: RunningDaemon;
  let client: Client;
  beforeAll(async () => {
    // The shipped defaults (reflection authenticated, caps and timeouts as documented), but the admin's own rate limit.
    daemon = await startDaemon({ readyTimeoutMs: READY_MS, config: LEGIT_CONFIG });
    client = await legitClient(daemon);
  });
  afterAll(async () => {
    client.close();
    await daemon.cleanup();
  });

  for (const kind of ['reflection', 'idle', 'halfopen'] as const) {
    it(`keeps its p99 under ${P99_BOUND_MS} ms during a ${kind} load, with no call failing`, async () => {
      const baseline = await legitLatencies(client, CALLS);
      const { result: loaded, load } = await underLoad(daemon, kind, () => legitLatencies(client, CALLS));
      console.log(`unauth-load ${kind}: baseline p50 ${baseline.p50.toFixed(1)} p99 ${baseline.p99.toFixed(1)} ms; loaded p50 ${loaded.p50.toFixed(1)} p99 ${loaded.p99.toFixed(1)} max ${loaded.max.toFixed(1)} ms, failed ${JSON.stringify(loaded.failedCodes)}; load ${JSON.stringify(load)}`);
      expect(loaded.failedCodes).toEqual({});
      expect(loaded.p99).toBeLessThan(P99_BOUND_MS);
    });
  }
});
