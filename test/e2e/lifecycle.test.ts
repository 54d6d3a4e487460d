// End-to-end: configuration errors, graceful shutdown and signals of the real daemon.
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect as http2Connect, type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fromBinary } from '@bufbuild/protobuf';
import { stringify } from 'yaml';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { ensureDevPki, type DevPkiPaths } from '../../src/pki/index.js';
import { AccessService, WhoAmIResponseSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { adminPem, baseConfig, clientFor, deepMerge, runMain, startDaemon, type RunningDaemon } from '../support/daemon.js';

const ADMIN = 'spiffe://debvisor/admin/admin';
const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';
/** A gRPC length-prefixed frame holding an empty message: uncompressed, length 0. */
const EMPTY_MESSAGE_FRAME = Buffer.from([0x00, 0x00, 0x00, 0x00, 0x00]);

describe('configuration', () => {
  let dir: string;
  let pki: DevPkiPaths;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpcd-e2e-config-'));
    pki = await ensureDevPki(join(dir, 'pki'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function configFile(name: string, overrides: Record<string, unknown> = {}): Promise<string> {
    const file = join(dir, name);
    // 0600 whatever the umask: the daemon refuses a config file others could write.
    await writeFile(file, stringify(deepMerge(baseConfig(pki, 7443, 9464), overrides)), { mode: 0o600 });
    return file;
  }

  it('exits 2 naming the file and key for a wrongly typed setting', async () => {
    const bad = await configFile('bad.yaml', { server: { max_request_bytes: 'big' } });
    const result = await runMain(['--config', bad]);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain(bad);
    expect(result.stderr).toContain('server.max_request_bytes');
  });

  it('--check-config exits 0 on a good config', async () => {
    const good = await configFile('good.yaml');
    const result = await runMain(['--config', good, '--check-config']);
    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('configuration OK');
    expect(result.stdout).toContain(good);
  });

  it('exits 2 naming the environment variable for a bad environment override', async () => {
    const good = await configFile('good-env.yaml');
    const result = await runMain(['--config', good, '--check-config'], { DEBVISOR_RPCD_SERVER_MAX_REQUEST_BYTES: 'abc' });
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('DEBVISOR_RPCD_SERVER_MAX_REQUEST_BYTES');
    expect(result.stderr).toContain('server.max_request_bytes');
  });
});

interface RawResponse {
  readonly headers: IncomingHttpHeaders;
  readonly trailers: IncomingHttpHeaders;
  readonly body: Buffer;
}

/** A raw HTTP/2 gRPC call whose request headers go out now and whose body is sent later (or never). */
class HeldCall {
  readonly response: Promise<RawResponse>;

  private constructor(
    readonly session: ClientHttp2Session,
    readonly stream: ClientHttp2Stream,
  ) {
    const chunks: Buffer[] = [];
    let headers: IncomingHttpHeaders = {};
    let trailers: IncomingHttpHeaders = {};
    stream.on('response', (h: IncomingHttpHeaders) => (headers = h));
    stream.on('trailers', (t: IncomingHttpHeaders) => (trailers = t));
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    this.response = new Promise((resolve, reject) => {
      stream.once('error', reject);
      stream.once('close', () => {
        resolve({ headers, trailers, body: Buffer.concat(chunks) });
      });
    });
    // Observed by the tests through `response`; never an unhandled rejection.
    this.response.catch(() => undefined);
  }

  static async open(daemon: RunningDaemon, path: string): Promise<HeldCall> {
    const { ca, cert, key } = await adminPem(daemon.pki);
    const session = http2Connect(`https://${daemon.grpcAddress}`, { ca, cert, key });
    session.on('error', () => undefined); // surfaced through the stream
    await once(session, 'connect');
    const stream = session.request(
      { ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' },
      { endStream: false },
    );
    // On a connected session the stream usually gets its id inside request(): 'ready' has already fired.
    if (stream.pending) await once(stream, 'ready');
    return new HeldCall(session, stream);
  }

  sendEmptyMessage(): void {
    this.stream.end(EMPTY_MESSAGE_FRAME);
  }

  close(): void {
    this.stream.destroy();
    this.session.destroy();
  }
}

/** Resolves with the error code of a new TCP connection to `address`, or 'connected'. */
function tcpProbe(address: string): Promise<string> {
  const index = address.lastIndexOf(':');
  return new Promise((resolve) => {
    const socket = netConnect({ host: address.slice(0, index), port: Number(address.slice(index + 1)) });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

describe('graceful shutdown', () => {
  let daemon: RunningDaemon | undefined;
  let call: HeldCall | undefined;

  afterEach(async () => {
    call?.close();
    call = undefined;
    await daemon?.cleanup();
    daemon = undefined;
  });

  it('finishes a call in flight at SIGTERM, refuses new connections, then exits 0', async () => {
    daemon = await startDaemon();
    call = await HeldCall.open(daemon, WHOAMI);
    await sleep(200); // request headers reach the daemon and the call is accepted

    daemon.process.kill('SIGTERM');
    await sleep(300);
    expect(daemon.alive()).toBe(true);
    // Draining: the listener is closed and readiness reports not ready.
    expect(await tcpProbe(daemon.grpcAddress)).toBe('ECONNREFUSED');
    const readyz = await fetch(`http://${daemon.httpAddress}/readyz`);
    expect(readyz.status).toBe(503);
    expect(await readyz.text()).toContain('draining');

    call.sendEmptyMessage();
    const response = await call.response;
    expect(response.headers[':status']).toBe(200);
    expect(response.trailers['grpc-status']).toBe('0');
    expect(response.body.length).toBeGreaterThanOrEqual(5);
    expect(response.body[0]).toBe(0); // not compressed
    expect(response.body.readUInt32BE(1)).toBe(response.body.length - 5);
    const me = fromBinary(WhoAmIResponseSchema, response.body.subarray(5));
    expect(me.principalId).toBe(ADMIN);

    // The daemon closes the drained connection itself: the client does not have to hang up first.
    const exit = await daemon.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(daemon.logRecords().find((r) => r.msg === 'stopped')).toMatchObject({ forced: false });
  });

  it('cancels a call held past shutdown_grace_seconds and still exits 0', async () => {
    const graceSeconds = 1;
    daemon = await startDaemon({ config: { server: { shutdown_grace_seconds: graceSeconds } } });
    call = await HeldCall.open(daemon, WHOAMI);
    await sleep(200);

    const signalledAt = Date.now();
    daemon.process.kill('SIGTERM');
    const exit = await daemon.exited;
    const elapsedMs = Date.now() - signalledAt;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(elapsedMs).toBeGreaterThanOrEqual(graceSeconds * 1000 - 100);
    expect(elapsedMs).toBeLessThan((graceSeconds + 2) * 1000);
    expect(daemon.logRecords().find((r) => r.msg === 'stopped')).toMatchObject({ forced: true });
    // The held call was cut off (forceShutdown tears the session down), never answered OK.
    await expect(call.response).rejects.toMatchObject({ code: expect.stringMatching(/^ERR_HTTP2_(SESSION|STREAM)_ERROR$/) as unknown });
  });
});

describe('signals', () => {
  let daemon: RunningDaemon;

  beforeAll(async () => {
    daemon = await startDaemon();
  });
  afterAll(async () => {
    await daemon.cleanup();
  });

  it('SIGHUP reloads instead of killing the daemon', async () => {
    daemon.process.kill('SIGHUP');
    await vi.waitFor(() => {
      expect(daemon.logRecords().some((r) => r.msg === 'reloaded configuration, certificates and CRL')).toBe(true);
    });
    expect(daemon.alive()).toBe(true);
    const client = await clientFor(AccessService, daemon);
    try {
      const me = await client.whoAmI({}, { timeoutMs: 5000 });
      expect(me.principalId).toBe(ADMIN);
    } finally {
      client.close();
    }
    expect(daemon.alive()).toBe(true);
  });
});
