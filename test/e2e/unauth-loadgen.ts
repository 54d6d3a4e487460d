// Unauthenticated load for test/e2e/security-unauth-load.test.ts and bench/unauth-load.ts,
// run as a SEPARATE process (`node test/e2e/unauth-loadgen.ts '<json options>'`, Node's
// type stripping) so its event loop never delays the legitimate client being measured.
// Bounded: it only targets 127.0.0.0/8, opens at most `connectionsPerSource` connections
// from each of `sources`, and stops by itself after `durationMs` (or when stdin closes).
// Prints `{"ready":true,...}` once the load is in place, then one JSON line of figures.
//
// kinds:
//   reflection  keeps `concurrency` reflection streams (file_containing_symbol) in flight per
//               source over one anonymous TLS + HTTP/2 connection, as fast as answers come;
//   idle        opens TLS connections (anonymous) and never makes a call;
//   halfopen    opens TCP connections and sends half a TLS ClientHello, then nothing.
import { connect as http2Connect, constants as h2, type ClientHttp2Session } from 'node:http2';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { readFileSync } from 'node:fs';

interface Options {
  kind: 'reflection' | 'idle' | 'halfopen';
  host: string;
  port: number;
  caFile: string;
  sources: string[];
  connectionsPerSource: number;
  concurrency: number;
  durationMs: number;
}

const options = JSON.parse(process.argv[2] ?? '{}') as Options;
if (!options.host.startsWith('127.') || options.sources.some((s) => !s.startsWith('127.'))) {
  throw new Error('unauth-loadgen only targets and binds loopback (127.0.0.0/8)');
}
const ca = readFileSync(options.caFile);
const stopAt = Date.now() + options.durationMs;
let stopping = false;
const figures = { calls: 0, codes: {} as Record<string, number>, opened: 0, refusedOrClosed: 0, errors: 0 };
const sockets = new Set<Socket>();

/** ServerReflectionRequest { file_containing_symbol = "debvisor.v1.VmService" } in a gRPC frame. */
function reflectionFrame(): Buffer {
  const symbol = Buffer.from('debvisor.v1.VmService');
  const message = Buffer.concat([Buffer.from([0x22, symbol.length]), symbol]);
  const header = Buffer.alloc(5);
  header.writeUInt32BE(message.length, 1);
  return Buffer.concat([header, message]);
}

function tlsFrom(source: string) {
  return tlsConnect({
    socket: netConnect({ host: options.host, port: options.port, localAddress: source }),
    ca,
    servername: 'localhost',
    ALPNProtocols: ['h2'],
    rejectUnauthorized: false,
  });
}

function reflectionStream(session: ClientHttp2Session, frame: Buffer): Promise<void> {
  return new Promise((resolve) => {
    const stream = session.request({
      [h2.HTTP2_HEADER_METHOD]: 'POST',
      [h2.HTTP2_HEADER_PATH]: '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
      [h2.HTTP2_HEADER_CONTENT_TYPE]: 'application/grpc',
      te: 'trailers',
    });
    let code = 'none';
    stream.on('response', (headers) => {
      if (headers['grpc-status'] !== undefined) code = String(headers['grpc-status']);
    });
    stream.on('trailers', (trailers: Record<string, string | string[] | undefined>) => {
      code = String(trailers['grpc-status'] ?? code);
    });
    stream.on('data', () => undefined);
    stream.on('error', () => undefined);
    stream.on('close', () => {
      figures.calls++;
      figures.codes[code] = (figures.codes[code] ?? 0) + 1;
      resolve();
    });
    stream.end(frame);
  });
}

async function reflectionLoad(source: string): Promise<void> {
  const frame = reflectionFrame();
  while (!stopping) {
    const session = http2Connect(`https://localhost:${options.port}`, { createConnection: () => tlsFrom(source) });
    session.on('error', () => {
      figures.errors++;
    });
    await new Promise<void>((resolve) => {
      session.once('connect', () => resolve());
      session.once('close', () => resolve());
    });
    figures.opened++;
    const loops = Array.from({ length: options.concurrency }, async () => {
      while (!stopping && !session.closed && !session.destroyed) await reflectionStream(session, frame);
    });
    await Promise.all(loops);
    session.destroy();
  }
}

/**
 * Keeps `socket` in the held set; when the daemon closes it after a timeout (it lived a
 * second or more), `reopen` replaces it, so the load lasts as long as the run. A refusal
 * at accept is not retried: that would only measure reconnect churn.
 */
function hold(socket: Socket, reopen: () => void): void {
  const opened = Date.now();
  sockets.add(socket);
  socket.on('error', () => undefined);
  socket.on('close', () => {
    sockets.delete(socket);
    if (stopping) return;
    figures.refusedOrClosed++;
    if (Date.now() - opened >= 1000) setImmediate(reopen);
  });
}

function settled(socket: Socket, event: 'secureConnect' | 'connect'): Promise<void> {
  return new Promise((resolve) => {
    socket.once(event, () => resolve());
    socket.once('close', () => resolve());
  });
}

function openIdle(source: string): Promise<void> {
  if (stopping) return Promise.resolve();
  const socket = tlsFrom(source);
  socket.once('secureConnect', () => figures.opened++);
  hold(socket, () => void openIdle(source));
  return settled(socket, 'secureConnect');
}

/** The first bytes of a TLS ClientHello (record and handshake headers): the server waits for the rest. */
const PARTIAL_HELLO = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]);

function openHalf(source: string): Promise<void> {
  if (stopping) return Promise.resolve();
  const socket = netConnect({ host: options.host, port: options.port, localAddress: source });
  socket.once('connect', () => {
    figures.opened++;
    socket.write(PARTIAL_HELLO);
  });
  hold(socket, () => void openHalf(source));
  return settled(socket, 'connect');
}

async function idleLoad(source: string): Promise<void> {
  for (let i = 0; i < options.connectionsPerSource && !stopping; i++) await openIdle(source);
}

async function halfOpenLoad(source: string): Promise<void> {
  for (let i = 0; i < options.connectionsPerSource && !stopping; i++) await openHalf(source);
}

const load = { reflection: reflectionLoad, idle: idleLoad, halfopen: halfOpenLoad }[options.kind];

function finish(): void {
  if (stopping) return;
  stopping = true;
  for (const socket of sockets) socket.destroy();
  process.stdout.write(`${JSON.stringify({ done: true, ...figures, stillOpen: sockets.size })}\n`, () => process.exit(0));
}

process.stdin.on('end', finish);
process.stdin.on('close', finish);
process.stdin.resume();
setTimeout(finish, Math.max(0, stopAt - Date.now())).unref();

const running = options.sources.map((source) => load(source));
if (options.kind === 'reflection') {
  // Ready once every source has its flood going.
  const started = Date.now();
  const waitForCalls = () => {
    if (figures.calls >= options.sources.length * options.concurrency || Date.now() - started > 30_000) {
      process.stdout.write(`${JSON.stringify({ ready: true, ...figures })}\n`);
    } else {
      setTimeout(waitForCalls, 20);
    }
  };
  waitForCalls();
} else {
  void Promise.all(running).then(() => process.stdout.write(`${JSON.stringify({ ready: true, ...figures, stillOpen: sockets.size })}\n`));
}
setInterval(() => {
  if (Date.now() >= stopAt) finish();
}, 500);
