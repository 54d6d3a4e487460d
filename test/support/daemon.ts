// Starts the REAL daemon (`node dist/main.js`) as a child process for end-to-end
// tests: a fresh dev PKI and YAML config in a temp dir, free loopback ports, and
// captured pino output. dist/ is built once by test/support/global-setup.ts.
import { existsSync, readFileSync } from 'node:fs';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Client,
  Metadata,
  type ChannelCredentials,
  type ClientOptions,
  type ServiceError,
  type StatusObject,
} from '@grpc/grpc-js';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { stringify } from 'yaml';
import { ensureDevPki, type DevPkiPaths } from '../../src/pki/index.js';
import { createClient, tlsCredentials, type TypedClient } from '../../src/client/client.js';
import { freePort } from './ports.js';
import { requireBuiltDist } from './built.js';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags.js';

export { freePort };

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const MAIN_JS = join(REPO_ROOT, 'dist', 'main.js');

const READY_POLL_MS = 50;
// Generous: these are deadlines for conditions, and a loaded 2-core CI machine can take this long.
const READY_TIMEOUT_MS = 90_000;
const KILL_AFTER_MS = 10_000;
const MAX_BIND_ATTEMPTS = 5;

export type ConfigOverrides = Record<string, unknown>;

export interface StartDaemonOptions {
  /** Deep-merged over the generated config (keys as in src/config/schema.ts). */
  readonly config?: ConfigOverrides;
  /** Extra environment for the daemon, e.g. DEBVISOR_RPCD_* overrides. */
  readonly env?: Record<string, string>;
  /** Default 45 s. */
  readonly readyTimeoutMs?: number;
  /** Extra command-line arguments after `--config FILE`. */
  readonly args?: readonly string[];
  /**
   * Use (and create if missing) the dev PKI in this directory instead of a fresh one in
   * the daemon's temp dir, so several daemons trust the same CA. cleanup() leaves it alone.
   */
  readonly pkiDir?: string;
}

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface RunningDaemon {
  readonly grpcAddress: string;
  readonly httpAddress: string;
  readonly grpcPort: number;
  readonly httpPort: number;
  /** Temp dir holding the config and the pki/ subdir; removed by cleanup(). */
  readonly dir: string;
  readonly configFile: string;
  readonly pki: DevPkiPaths;
  readonly process: ChildProcess;
  readonly pid: number;
  /** stdout and stderr as captured so far, interleaved in arrival order. */
  logs(): string;
  stdout(): string;
  stderr(): string;
  /** The pino JSON lines of stdout, parsed (non-JSON lines are skipped). */
  logRecords(): Record<string, unknown>[];
  /** Settles when the process has exited and its output is fully captured. */
  readonly exited: Promise<Exit>;
  /** True until the process has exited. */
  alive(): boolean;
  /** Sends `signal` by PID; SIGKILLs after 10 s. Resolves with the exit code (null if killed by a signal). */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** stop() if still running, then remove the temp dir. Safe to call twice. */
  cleanup(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  // Last resort if a suite forgot to clean up: never leave daemons behind.
  for (const child of running) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const current = out[key];
    out[key] = isPlainObject(current) && isPlainObject(value) ? deepMerge(current, value) : value;
  }
  return out;
}


/** The environment the daemon sees: ours minus any stray DEBVISOR_RPCD_* settings, plus `extra`. */
export function daemonEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('DEBVISOR_RPCD_')) env[key] = value;
  }
  return { ...env, ...extra };
}

/**
 * The config every test daemon starts from: its store, audit log and keys all live in
 * the daemon's temp dir, so no test touches /var or /etc.
 */
export function baseConfig(pki: DevPkiPaths, grpcPort: number, httpPort: number, dir = join(pki.dir, '..')): Record<string, unknown> {
  return {
    server: { listen: `127.0.0.1:${grpcPort}`, shutdown_grace_seconds: 5 },
    http: { listen: `127.0.0.1:${httpPort}` },
    tls: { ca_file: pki.caCert, cert_file: pki.serverCert, key_file: pki.serverKey },
    store: { backend: 'embedded', embedded: { dir: join(dir, 'state') } },
    // Suites look up the AUTH_FAILED records of their deliberate failures; the flood tests lower this.
    audit: { path: join(dir, 'audit', 'rpc-audit.log'), hmac_key_file: join(dir, 'audit', 'hmac.key'), unauthenticated_records_per_source: 100_000 },
    // Suites make many deliberate failures from 127.0.0.1; the blocking test lowers this.
    auth: { bootstrap_admins: [pki.adminPrincipal], max_failures_per_minute: 100_000, max_key_failures_per_minute: 100_000 },
    log: { level: 'info' },
  };
}

/** The daemon's audit log (current file), parsed. */
export function auditRecords(daemon: Pick<RunningDaemon, 'dir'>): Record<string, unknown>[] {
  const file = join(daemon.dir, 'audit', 'rpc-audit.log');
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

class StartupError extends Error {
  constructor(
    message: string,
    readonly addressInUse: boolean,
  ) {
    super(message);
    this.name = 'StartupError';
  }
}

interface Spawned {
  child: ChildProcess;
  exited: Promise<Exit>;
  chunks: { stream: 'stdout' | 'stderr'; text: string }[];
  exit: Exit | undefined;
}

function spawnMain(args: string[], env: NodeJS.ProcessEnv): Spawned {
  requireBuiltDist();
  const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, MAIN_JS, ...args], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const spawned: Spawned = { child, exited: Promise.resolve({ code: null, signal: null }), chunks: [], exit: undefined };
  running.add(child);
  child.stdout.setEncoding('utf8').on('data', (text: string) => spawned.chunks.push({ stream: 'stdout', text }));
  child.stderr.setEncoding('utf8').on('data', (text: string) => spawned.chunks.push({ stream: 'stderr', text }));
  spawned.exited = new Promise<Exit>((resolveExit) => {
    child.once('error', (err) => {
      spawned.chunks.push({ stream: 'stderr', text: `spawn error: ${err.message}\n` });
      spawned.exit = { code: null, signal: null };
      running.delete(child);
      resolveExit(spawned.exit);
    });
    child.once('close', (code, signal) => {
      spawned.exit = { code, signal };
      running.delete(child);
      resolveExit(spawned.exit);
    });
  });
  return spawned;
}

async function waitReady(spawned: Spawned, httpAddress: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const output = () => spawned.chunks.map((c) => c.text).join('');
  while (Date.now() < deadline) {
    if (spawned.exit) {
      const out = output();
      throw new StartupError(
        `daemon exited before ready (code ${spawned.exit.code}, signal ${spawned.exit.signal}):\n${out}`,
        /EADDRINUSE|address already in use/i.test(out),
      );
    }
    try {
      const res = await fetch(`http://${httpAddress}/readyz`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(READY_POLL_MS);
  }
  throw new StartupError(`daemon not ready within ${timeoutMs} ms:\n${output()}`, false);
}

async function terminate(spawned: Spawned, signal: NodeJS.Signals): Promise<Exit> {
  if (spawned.exit) return spawned.exit;
  const pid = spawned.child.pid;
  if (pid !== undefined) {
    try {
      process.kill(pid, signal);
    } catch {
      // exited in between
    }
  }
  const timer = setTimeout(() => {
    if (!spawned.exit && pid !== undefined) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }, KILL_AFTER_MS);
  try {
    return await spawned.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Starts `node dist/main.js --config <tmp>/rpcd.yaml` and waits for /readyz 200. */
export async function startDaemon(options: StartDaemonOptions = {}): Promise<RunningDaemon> {
  const dir = await mkdtemp(join(tmpdir(), 'rpcd-e2e-'));
  try {
    const pki = await ensureDevPki(options.pkiDir ?? join(dir, 'pki'));
    const configFile = join(dir, 'rpcd.yaml');
    for (let attempt = 1; ; attempt++) {
      const grpcPort = await freePort();
      let httpPort = await freePort();
      while (httpPort === grpcPort) httpPort = await freePort();
      const config = deepMerge(baseConfig(pki, grpcPort, httpPort, dir), options.config ?? {});
      await writeFile(configFile, stringify(config), { mode: 0o600 });
      const grpcAddress = listenOf(config, 'server') ?? `127.0.0.1:${grpcPort}`;
      const httpAddress = listenOf(config, 'http') ?? `127.0.0.1:${httpPort}`;
      const spawned = spawnMain(['--config', configFile, ...(options.args ?? [])], daemonEnv(options.env));
      try {
        await waitReady(spawned, httpAddress, options.readyTimeoutMs ?? READY_TIMEOUT_MS);
      } catch (err) {
        await terminate(spawned, 'SIGKILL');
        if (err instanceof StartupError && err.addressInUse && attempt < MAX_BIND_ATTEMPTS) continue;
        throw err;
      }
      return runningDaemon(spawned, { dir, configFile, pki, grpcAddress, httpAddress });
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

function listenOf(config: Record<string, unknown>, section: 'server' | 'http'): string | undefined {
  const value = config[section];
  return isPlainObject(value) && typeof value.listen === 'string' ? value.listen : undefined;
}

function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

function runningDaemon(
  spawned: Spawned,
  where: { dir: string; configFile: string; pki: DevPkiPaths; grpcAddress: string; httpAddress: string },
): RunningDaemon {
  const text = (stream?: 'stdout' | 'stderr') =>
    spawned.chunks
      .filter((c) => stream === undefined || c.stream === stream)
      .map((c) => c.text)
      .join('');
  let cleaned = false;
  const daemon: RunningDaemon = {
    ...where,
    grpcPort: portOf(where.grpcAddress),
    httpPort: portOf(where.httpAddress),
    process: spawned.child,
    pid: spawned.child.pid ?? -1,
    logs: () => text(),
    stdout: () => text('stdout'),
    stderr: () => text('stderr'),
    logRecords: () =>
      text('stdout')
        .split('\n')
        .flatMap((line) => {
          try {
            const parsed: unknown = JSON.parse(line);
            return isPlainObject(parsed) ? [parsed] : [];
          } catch {
            return [];
          }
        }),
    exited: spawned.exited,
    alive: () => spawned.exit === undefined,
    stop: async (signal = 'SIGTERM') => (await terminate(spawned, signal)).code,
    cleanup: async () => {
      if (cleaned) return;
      cleaned = true;
      await terminate(spawned, 'SIGTERM');
      await rm(where.dir, { recursive: true, force: true });
    },
  };
  return daemon;
}

export interface CliResult {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `node dist/main.js ...args` to completion (for --check-config and config errors). */
export function runMain(args: string[], env: Record<string, string> = {}, timeoutMs = 90_000): Promise<CliResult> {
  requireBuiltDist();
  return new Promise((resolveRun) => {
    execFile(process.execPath, [...DAEMON_NODE_FLAGS, MAIN_JS, ...args], { cwd: REPO_ROOT, env: daemonEnv(env), timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
      resolveRun({ code, stdout, stderr });
    });
  });
}

// ---- clients --------------------------------------------------------------

/** A client identity as PEM (certificate + key). */
export interface ClientPem {
  readonly cert: Buffer | string;
  readonly key: Buffer | string;
}

export interface PemFiles {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** The dev CA plus the dev admin certificate and key. */
export async function adminPem(pki: DevPkiPaths): Promise<PemFiles> {
  const [ca, cert, key] = await Promise.all([readFile(pki.caCert), readFile(pki.adminCert), readFile(pki.adminKey)]);
  return { ca, cert, key };
}

/**
 * Channel credentials trusting the dev CA. `identity` undefined = the dev admin
 * cert; null = no client certificate at all; otherwise that cert/key pair.
 */
export async function credentialsFor(pki: DevPkiPaths, identity?: ClientPem | null): Promise<ChannelCredentials> {
  const admin = await adminPem(pki);
  if (identity === null) return tlsCredentials({ ca: admin.ca });
  const pair = identity ?? admin;
  return tlsCredentials({ ca: admin.ca, cert: Buffer.from(pair.cert), key: Buffer.from(pair.key) });
}

/** Own subchannels per client, so tests with different certificates never share a connection. */
export const CLIENT_OPTIONS: ClientOptions = { 'grpc.use_local_subchannel_pool': 1 };

/** A typed client (src/client/client.ts) for `service` on the daemon. */
export async function clientFor<S extends GenServiceMethods>(
  service: GenService<S>,
  daemon: Pick<RunningDaemon, 'grpcAddress' | 'pki'>,
  identity?: ClientPem | null,
): Promise<TypedClient<S>> {
  return createClient(service, {
    address: daemon.grpcAddress,
    credentials: await credentialsFor(daemon.pki, identity),
    options: CLIENT_OPTIONS,
  });
}

/** A bare grpc-js client, for raw bytes, unknown methods and trailers. */
export async function rawClientFor(daemon: Pick<RunningDaemon, 'grpcAddress' | 'pki'>, identity?: ClientPem | null): Promise<Client> {
  return new Client(daemon.grpcAddress, await credentialsFor(daemon.pki, identity), CLIENT_OPTIONS);
}

export interface RawUnaryResult {
  readonly error: ServiceError | undefined;
  readonly response: Buffer | undefined;
  /** The final status, including the trailers as `metadata`. */
  readonly status: StatusObject;
}

/** One unary call with identity (de)serializers: bytes in, bytes out, plus the final status. */
export function rawUnary(
  client: Client,
  path: string,
  body: Buffer,
  metadata: Record<string, string> = {},
  timeoutMs = 10_000,
): Promise<RawUnaryResult> {
  const md = new Metadata();
  for (const [key, value] of Object.entries(metadata)) md.set(key, value);
  return new Promise((resolveCall) => {
    let error: ServiceError | undefined;
    let response: Buffer | undefined;
    let settled = 0;
    let status: StatusObject | undefined;
    const done = () => {
      if (++settled === 2 && status) resolveCall({ error, response, status });
    };
    const call = client.makeUnaryRequest<Buffer, Buffer>(
      path,
      (value) => value,
      (value) => value,
      body,
      md,
      { deadline: new Date(Date.now() + timeoutMs) },
      (err, value) => {
        error = err ?? undefined;
        response = value;
        done();
      },
    );
    call.on('status', (s: StatusObject) => {
      status = s;
      done();
    });
  });
}
