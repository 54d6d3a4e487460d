// The chain benchmark's load generator (bench/chain.ts), run as its own process:
//   tsx bench/loadgen.ts '<LoadSpec JSON>'
// A raw HTTP/2 gRPC client on node:http2 over TLS, not grpc-js: the grpc-js client
// saturates its own core long before a server does. Each call is one HTTP/2 stream:
// POST headers, one length-prefixed message (0x00 + u32 length + protobuf bytes),
// END_STREAM; the answer's grpc-status comes from the trailers (or from the headers of
// a trailers-only response). Anything but HTTP 200 + grpc-status 0 is an error.
//
// `concurrency` calls stay in flight, spread round-robin over `connections` sessions.
// After `warmupMs` the measured window starts: the server's CPU time is read from
// /proc/<serverPid>/stat at its start and end, and only calls that complete inside it
// are counted. Prints one LoadResult JSON line on stdout.
import { connect, constants, type ClientHttp2Session, type IncomingHttpHeaders, type OutgoingHttpHeaders } from 'node:http2';
import { readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { pathToFileURL } from 'node:url';

export interface LoadSpec {
  readonly host: string;
  readonly port: number;
  /** `/package.Service/Method` */
  readonly path: string;
  /** The request message, protobuf-encoded, as hex. */
  readonly requestHex: string;
  readonly caFile: string;
  /** Client certificate and key; omit both for a CA-only TLS connection. */
  readonly certFile?: string;
  readonly keyFile?: string;
  /** Extra request headers, e.g. { authorization: 'Bearer …' }. */
  readonly headers?: Record<string, string>;
  readonly connections: number;
  readonly concurrency: number;
  readonly warmupMs: number;
  readonly durationMs: number;
  /** The server process whose CPU time is measured. */
  readonly serverPid: number;
}

export interface LoadResult {
  /** Successful calls completed in the measured window. */
  readonly calls: number;
  /** Failed calls over the whole run, warm-up included. */
  readonly errors: number;
  /** Successful calls over the whole run, warm-up included (to scale a CPU profile). */
  readonly totalCalls: number;
  /** Server CPU split: user and system seconds over the measured window. */
  readonly serverUserSeconds: number;
  readonly serverSystemSeconds: number;
  /** A few of the distinct error descriptions, with counts. */
  readonly errorKinds: Record<string, number>;
  readonly seconds: number;
  readonly qps: number;
  readonly p50ms: number;
  readonly p99ms: number;
  /** Server CPU (user + system) over the measured window, in seconds. */
  readonly serverCpuSeconds: number;
  readonly serverCpuUsPerCall: number;
  /** This load generator's own CPU over the window, for context. */
  readonly clientCpuSeconds: number;
  /** Server CPU seconds over the window by thread name (MainThread, V8Worker, libuv-worker, …). */
  readonly serverThreadSeconds: Record<string, number>;
}

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** A /proc stat line's command name and its utime and stime (fields 14 and 15) in seconds. */
function parseStat(stat: string): { name: string; user: number; system: number } {
  // Field 2 (comm) may contain spaces and parentheses: count fields after the last ')'.
  const close = stat.lastIndexOf(')');
  const rest = stat.slice(close + 2).split(' ');
  // rest[0] is field 3 (state), so field n is rest[n - 3].
  return { name: stat.slice(stat.indexOf('(') + 1, close), user: Number(rest[11]) / CLOCK_TICKS, system: Number(rest[12]) / CLOCK_TICKS };
}

/** utime + stime of a process in seconds (/proc/<pid>/stat). */
export function processCpuSeconds(pid: number): { user: number; system: number; total: number } {
  const { user, system } = parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  return { user, system, total: user + system };
}

/**
 * CPU seconds of a process's threads, summed by thread name (/proc/<pid>/task/<tid>/stat):
 * where the time goes beyond the main thread, i.e. V8's GC workers and libuv's pool.
 * A thread that exits inside the window takes its time out of the sum.
 */
export function threadCpuSeconds(pid: number): Map<string, number> {
  const byName = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    const { name, user, system } = parseStat(stat);
    byName.set(name, (byName.get(name) ?? 0) + user + system);
  }
  return byName;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted.length === 0 ? NaN : (sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN);
}

export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const ca = readFileSync(spec.caFile);
  const tlsOptions = {
    ca,
    ...(spec.certFile && spec.keyFile ? { cert: readFileSync(spec.certFile), key: readFileSync(spec.keyFile) } : {}),
    servername: 'localhost',
  };
  const sessions: ClientHttp2Session[] = await Promise.all(
    Array.from(
      { length: spec.connections },
      () =>
        new Promise<ClientHttp2Session>((resolve, reject) => {
          const session = connect(`https://${spec.host}:${spec.port}`, tlsOptions);
          session.once('connect', () => resolve(session));
          session.once('error', reject);
        }),
    ),
  );
  for (const session of sessions) session.on('error', () => undefined);

  const message = Buffer.from(spec.requestHex, 'hex');
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  message.copy(frame, 5);
  const requestHeaders: OutgoingHttpHeaders = {
    [constants.HTTP2_HEADER_METHOD]: 'POST',
    [constants.HTTP2_HEADER_PATH]: spec.path,
    [constants.HTTP2_HEADER_SCHEME]: 'https',
    [constants.HTTP2_HEADER_AUTHORITY]: `localhost:${spec.port}`,
    'content-type': 'application/grpc',
    te: 'trailers',
    ...spec.headers,
  };

  // Latencies of calls completed in the measured window (ms); grown on demand.
  let latencies = new Float64Array(1 << 16);
  let calls = 0;
  let totalCalls = 0;
  let errors = 0;
  const errorKinds: Record<string, number> = {};
  let measuring = false;
  let stopping = false;

  const record = (startedAt: number, error: string | undefined) => {
    // Errors count whenever they happen (warm-up included); latencies only in the window.
    if (error !== undefined) {
      errors++;
      errorKinds[error] = (errorKinds[error] ?? 0) + 1;
      return;
    }
    totalCalls++;
    if (!measuring) return;
    if (calls === latencies.length) {
      const grown = new Float64Array(latencies.length * 2);
      grown.set(latencies);
      latencies = grown;
    }
    latencies[calls++] = performance.now() - startedAt;
  };

  /** One call; resolves when the stream is closed. */
  const call = (session: ClientHttp2Session) =>
    new Promise<void>((resolve) => {
      const startedAt = performance.now();
      let statusCode: string | undefined;
      let httpStatus: number | undefined;
      let message_: string | undefined;
      const fromHeaders = (headers: IncomingHttpHeaders) => {
        const value = headers['grpc-status'];
        if (typeof value === 'string') statusCode = value;
        const text = headers['grpc-message'];
        if (typeof text === 'string') message_ = decodeURIComponent(text);
      };
      const stream = session.request(requestHeaders, { endStream: false });
      stream.on('response', (headers) => {
        httpStatus = Number(headers[constants.HTTP2_HEADER_STATUS]);
        fromHeaders(headers);
      });
      stream.on('trailers', fromHeaders);
      stream.on('data', () => undefined);
      stream.on('error', () => undefined);
      stream.once('close', () => {
        const error =
          httpStatus !== 200 ? `http ${httpStatus ?? 'none'} (rst ${stream.rstCode})` : statusCode !== '0' ? `grpc-status ${statusCode ?? 'none'}: ${message_ ?? ''}` : undefined;
        record(startedAt, error);
        resolve();
      });
      stream.end(frame);
    });

  const workers = Array.from({ length: spec.concurrency }, async (_, index) => {
    const session = sessions[index % sessions.length]!;
    while (!stopping) await call(session);
  });

  await new Promise((resolve) => setTimeout(resolve, spec.warmupMs));
  measuring = true;
  const cpu0 = processCpuSeconds(spec.serverPid);
  const threads0 = threadCpuSeconds(spec.serverPid);
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  await new Promise((resolve) => setTimeout(resolve, spec.durationMs));
  measuring = false;
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = processCpuSeconds(spec.serverPid);
  const threads1 = threadCpuSeconds(spec.serverPid);
  const client1 = process.cpuUsage(client0);
  stopping = true;
  await Promise.all(workers);
  await Promise.all(sessions.map((session) => new Promise<void>((resolve) => session.close(resolve))));

  const measured = latencies.subarray(0, calls).sort();
  const serverCpuSeconds = cpu1.total - cpu0.total;
  return {
    calls,
    errors,
    totalCalls,
    serverUserSeconds: cpu1.user - cpu0.user,
    serverSystemSeconds: cpu1.system - cpu0.system,
    errorKinds: Object.fromEntries(Object.entries(errorKinds).slice(0, 5)),
    seconds,
    qps: calls / seconds,
    p50ms: percentile(measured, 0.5),
    p99ms: percentile(measured, 0.99),
    serverCpuSeconds,
    serverCpuUsPerCall: calls > 0 ? (serverCpuSeconds * 1e6) / calls : NaN,
    clientCpuSeconds: (client1.user + client1.system) / 1e6,
    serverThreadSeconds: Object.fromEntries([...threads1].map(([name, total]) => [name, total - (threads0.get(name) ?? 0)])),
  };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const spec = JSON.parse(process.argv[2] ?? '{}') as LoadSpec;
  const result = await runLoad(spec);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
