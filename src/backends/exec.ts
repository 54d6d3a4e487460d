// The one way the daemon runs host commands (virsh, lvm tools, rbd, qemu-img).
// - argv only, never a shell; binaries by absolute path, fixed at construction;
// - the child gets an allow-listed environment, its own process group, and no terminal;
// - each call is bounded: a timeout, output caps, a per-backend concurrency limit;
// - cancellation (the gRPC call's or operation's AbortSignal) kills the whole process group:
//   SIGTERM, then SIGKILL after a grace period;
// - failures are typed domain errors (ExecError); src/rpc/errors.ts maps them to gRPC codes.
// Names that reach an argv must have passed src/backends/validate.ts first: exec only refuses
// NUL and newlines as a last line of defence.
import { DomainError, GENERIC_INTERNAL_MESSAGE, type DomainErrorKind } from '../errors/domain.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { isAbsolute } from 'node:path';
import { StringDecoder } from 'node:string_decoder';
import { Counter, Histogram, type Registry } from 'prom-client';

/**
 * `no_space`: the pool / VG lacks the capacity asked for. `unsupported`: this host cannot do it at
 * all (e.g. LVM snapshots on a kernel without device-mapper): retrying will not help.
 */
export type ExecErrorKind = 'not_found' | 'exists' | 'busy' | 'no_space' | 'unsupported' | 'unavailable' | 'timeout' | 'cancelled' | 'failed';

/** What a client is told of a failed host command when the caller chose no message: never stderr. */
function genericExecMessage(kind: ExecErrorKind, backend: string): string {
  switch (kind) {
    case 'not_found':
      return 'the backend object does not exist';
    case 'exists':
      return 'the backend object already exists';
    case 'busy':
      return 'the backend object is busy; retry later';
    case 'no_space':
      return `the ${backend} backend has not enough free space`;
    case 'unsupported':
      return `this host's ${backend} backend does not support the operation`;
    case 'unavailable':
      return `the ${backend} backend is unavailable; retry later`;
    case 'timeout':
      return 'the backend command timed out';
    case 'cancelled':
      return 'the backend command was cancelled';
    case 'failed':
      return GENERIC_INTERNAL_MESSAGE;
  }
}

export interface ExecResult {
  /** The command's key in `binaries`. */
  readonly command: string;
  /** Exit code; 128 + signal number when the child died of a signal. */
  readonly code: number;
  /** The signal that ended the child, if any. */
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  /** True when stdout or stderr exceeded maxOutputBytes and the excess was dropped. */
  readonly truncated: boolean;
  readonly durationMs: number;
}

/**
 * A host command that failed, timed out, was cancelled or could not run.
 * `message`, `stderr` and `args` are for logs and audit only: clients see the
 * generic text of its kind (safeMessage), or `publicMessage` when the
 * caller supplied one (and it must not contain stderr).
 */
export class ExecError extends DomainError {
  readonly kind: ExecErrorKind;
  readonly backend: string;
  readonly command: string;
  readonly args: readonly string[];
  /** Null when the command never ran or was killed before it exited. */
  readonly exitCode: number | null;
  readonly stderr: string;
  /** A client-safe message chosen by the caller's classification rule. */
  readonly publicMessage: string | undefined;

  constructor(init: {
    kind: ExecErrorKind;
    backend: string;
    command: string;
    args?: readonly string[];
    exitCode?: number | null;
    stderr?: string;
    publicMessage?: string;
    cause?: unknown;
  }) {
    const exit = init.exitCode === undefined || init.exitCode === null ? '' : ` (exit code ${init.exitCode})`;
    super(`${init.backend} ${init.command}: ${init.kind}${exit}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'ExecError';
    this.kind = init.kind;
    this.backend = init.backend;
    this.command = init.command;
    this.args = init.args ?? [];
    this.exitCode = init.exitCode ?? null;
    this.stderr = init.stderr ?? '';
    this.publicMessage = init.publicMessage;
  }
  get meaning(): DomainErrorKind {
    return this.kind === 'exists' ? 'already_exists' : this.kind;
  }

  get safeMessage(): string {
    return this.publicMessage ?? genericExecMessage(this.kind, this.backend);
  }

}

/** Programming errors: a caller passed an argv exec will never run. Not a client error (maps to INTERNAL). */
export class ExecUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ExecUsageError';
  }
}

export interface ClassifyRule {
  readonly kind: ExecErrorKind;
  /** Matches when the exit code equals this. */
  readonly code?: number;
  /** Matches when stderr matches this. */
  readonly stderr?: RegExp;
  /** Client-safe message for this case (never include stderr). */
  readonly message?: string;
}

/**
 * Turns a finished command into an ExecError, or undefined for success.
 * Rules are tried in order; a rule matches when all its given conditions hold
 * (a rule with neither `code` nor `stderr` matches any non-zero exit).
 * With exit code 0, only rules naming `code: 0` or a `stderr` pattern can
 * match; with a non-zero exit and no matching rule the kind is `failed`.
 */
export function classify(result: ExecResult, rules: readonly ClassifyRule[], backend = ''): ExecError | undefined {
  for (const rule of rules) {
    if (result.code === 0 && rule.code !== 0 && rule.stderr === undefined) continue;
    if (rule.code !== undefined && rule.code !== result.code) continue;
    if (rule.stderr !== undefined && !new RegExp(rule.stderr.source, rule.stderr.flags.replace(/[gy]/g, '')).test(result.stderr)) continue;
    return new ExecError({ kind: rule.kind, backend, command: result.command, exitCode: result.code, stderr: result.stderr, publicMessage: rule.message });
  }
  if (result.code === 0) return undefined;
  return new ExecError({ kind: 'failed', backend, command: result.command, exitCode: result.code, stderr: result.stderr });
}

export interface SpawnEvent {
  readonly backend: string;
  readonly command: string;
  readonly path: string;
  readonly args: readonly string[];
}

export interface ExecutorOptions {
  /** Label for metrics and errors, e.g. "libvirt", "lvm", "rbd". */
  readonly backend: string;
  /** Command name → absolute path of its binary. */
  readonly binaries: Readonly<Record<string, string>>;
  /** Names of variables copied from the daemon's environment when set. */
  readonly envAllowList: readonly string[];
  /** Variables set for every child (after the allow-list). `LC_ALL=C` is the default so stderr is classifiable English. */
  readonly extraEnv?: Readonly<Record<string, string>>;
  /** Commands of this backend running at once; further calls queue. */
  readonly maxConcurrent: number;
  /** Per-command time limit from spawn, unless the call gives its own. */
  readonly defaultTimeoutMs: number;
  /** Cap on captured stdout and on captured stderr, each. */
  readonly maxOutputBytes: number;
  /** Time between SIGTERM and SIGKILL to the process group. */
  readonly killGraceMs: number;
  readonly registry: Registry;
  /** Called just before every spawn: tests use it to assert that nothing ran. */
  readonly onSpawn?: (event: SpawnEvent) => void;
}

export interface RunOptions {
  /** Aborting kills the command's process group. A reason that is a DEADLINE_EXCEEDED RpcError or a TimeoutError gives kind `timeout`, anything else `cancelled`. */
  readonly signal?: AbortSignal;
  readonly timeoutMs?: number;
  /** Written to the child's stdin, which is then closed. Without it stdin is /dev/null. */
  readonly stdin?: Uint8Array;
  /** Each stderr line (split at \n, \r\n or \r), as it arrives; not subject to the output cap. */
  readonly onStderrLine?: (line: string) => void;
  /** Raw decoded stderr text as it arrives (for progressParser: rbd reports progress here); not subject to the output cap. */
  readonly onStderrChunk?: (chunk: string) => void;
  /** Raw decoded stdout text as it arrives (for progressParser: `qemu-img convert -p` reports progress here); not subject to the output cap. */
  readonly onStdoutChunk?: (chunk: string) => void;
}

export interface ExecutorStats {
  /** Processes spawned by this executor (attempts, including ones that failed to start). */
  readonly spawned: number;
  readonly running: number;
  readonly queued: number;
}

export interface Executor {
  readonly backend: string;
  /**
   * Runs a configured command. Resolves with the result for any exit code
   * (use `check` or `classify`); rejects with ExecError for `unavailable`
   * (the binary could not be started), `timeout` and `cancelled`, and with
   * ExecUsageError for an unknown command or a bad argument.
   */
  run(command: string, args: readonly string[], opts?: RunOptions): Promise<ExecResult>;
  /**
   * `classify` for this backend: returns the result on success, throws the ExecError otherwise.
   * An `unavailable` classification (e.g. "cannot connect to libvirtd") is counted in backend_connection_errors_total.
   */
  check(result: ExecResult, rules?: readonly ClassifyRule[]): ExecResult;
  readonly stats: ExecutorStats;
  /**
   * Starts a long-lived command (a subscription such as `virsh event --loop`) with the same binary,
   * environment, process group and spawn hooks as `run`, but no timeout, no output capture and no
   * concurrency slot (it would hold one for its whole life). Output arrives line by line.
   */
  stream(command: string, args: readonly string[], opts: StreamOptions): StreamHandle;
}

export interface StreamOptions {
  readonly onStdoutLine: (line: string) => void;
  readonly onStderrLine?: (line: string) => void;
}

export interface StreamExit {
  /** Null when killed by a signal or never started. */
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Set when the binary could not be started. */
  readonly error?: ExecError;
}

export interface StreamHandle {
  readonly pid: number | undefined;
  /** Settles (never rejects) once the process has exited and its output is read. */
  readonly exited: Promise<StreamExit>;
  /** SIGTERM to the process group, SIGKILL after the grace period; resolves when it has exited. */
  stop(): Promise<StreamExit>;
}

/**
 * The environment a host command gets: the allow-listed variables of the daemon's own
 * (when set), then `extra`. Nothing else of the daemon's environment (credentials a unit
 * file or an operator put there) reaches a child.
 */
export function childEnvironment(allowList: readonly string[], extra: Readonly<Record<string, string>>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const name of allowList) {
    const value = process.env[name];
    if (value !== undefined) env[name] = value;
  }
  return Object.assign(env, extra);
}

let totalSpawned = 0;

/**
 * A test and debugging aid: with DEBVISOR_EXEC_TRACE=<file> set in the daemon's environment, every
 * host command is appended to that file as one JSON line ({backend, command, args}) before it is
 * spawned (the fuzz suite checks each argv against the validators). Arguments never hold secrets:
 * credentials reach tools as file paths (ceph keyring) or config, never as argv text.
 */
function traceSpawn(event: SpawnEvent): void {
  const file = process.env.DEBVISOR_EXEC_TRACE;
  if (!file) return;
  try {
    // Synchronous: each line is written whole, in spawn order, even if the daemon dies next.
    appendFileSync(file, `${JSON.stringify({ backend: event.backend, command: event.command, args: event.args })}\n`, { mode: 0o600 });
  } catch {
    // A trace that cannot be written must not stop the command.
  }
}

/** Processes spawned by all executors in this process: a test spy that nothing ran. */
export function spawnCount(): number {
  return totalSpawned;
}

interface ExecMetrics {
  readonly duration: Histogram<'backend_service' | 'command' | 'result'>;
  readonly connectionErrors: Counter<'backend_service'>;
}

const metricsByRegistry = new WeakMap<Registry, ExecMetrics>();

const COMMAND_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];

/** Creates the exec metrics once per registry, however many executors share it. */
function execMetrics(registry: Registry): ExecMetrics {
  const existing = metricsByRegistry.get(registry);
  if (existing) return existing;
  const duration = registry.getSingleMetric('backend_command_duration_seconds');
  const errors = registry.getSingleMetric('backend_connection_errors_total');
  const metrics: ExecMetrics = {
    duration:
      duration instanceof Histogram
        ? duration
        : new Histogram({
            name: 'backend_command_duration_seconds',
            help: 'Host commands run by a backend, by command and result (ok, error, timeout, cancelled, unavailable).',
            labelNames: ['backend_service', 'command', 'result'] as const,
            buckets: COMMAND_BUCKETS,
            registers: [registry],
          }),
    connectionErrors:
      errors instanceof Counter
        ? errors
        : new Counter({
            name: 'backend_connection_errors_total',
            help: 'A backend tool was missing or could not reach its service, by backend.',
            labelNames: ['backend_service'] as const,
            registers: [registry],
          }),
  };
  metricsByRegistry.set(registry, metrics);
  return metrics;
}

/** A FIFO counting semaphore whose waiters give up when their signal aborts. */
class Semaphore {
  private active = 0;
  private readonly waiters: { grant: () => void }[] = [];

  constructor(private readonly max: number) {}

  get running(): number {
    return this.active;
  }

  get queued(): number {
    return this.waiters.length;
  }

  acquire(signal: AbortSignal | undefined, onAbort: () => Error): Promise<void> {
    if (signal?.aborted) return Promise.reject(onAbort());
    if (this.active < this.max) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const abort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(onAbort());
      };
      const waiter = {
        grant: () => {
          signal?.removeEventListener('abort', abort);
          resolve();
        },
      };
      signal?.addEventListener('abort', abort, { once: true });
      this.waiters.push(waiter);
    });
  }

  release(): void {
    const next = this.waiters.shift();
    // Hand the slot straight to the next waiter: `active` stays the same.
    if (next) next.grant();
    else this.active--;
  }
}

/** Collects a stream up to a byte cap, dropping (and flagging) the rest. */
class CappedBuffer {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  truncated = false;

  constructor(private readonly cap: number) {}

  push(chunk: Buffer): void {
    const room = this.cap - this.size;
    if (chunk.length > room) this.truncated = true;
    if (room <= 0) return;
    const kept = chunk.length > room ? chunk.subarray(0, room) : chunk;
    this.chunks.push(kept);
    this.size += kept.length;
  }

  text(): string {
    // A cut may split a multi-byte character: it decodes to U+FFFD, which is fine for a flagged, truncated result.
    return Buffer.concat(this.chunks, this.size).toString('utf8');
  }
}

/** Splits streamed text into lines at \n, \r\n or \r; the trailing partial line is bounded. */
function lineSplitter(onLine: (line: string) => void, maxLine: number): { push(text: string): void; end(): void } {
  let partial = '';
  let lastWasCr = false;
  return {
    push(text) {
      for (const ch of text) {
        if (ch === '\n' && lastWasCr) {
          lastWasCr = false;
          continue;
        }
        lastWasCr = ch === '\r';
        if (ch === '\n' || ch === '\r') {
          onLine(partial);
          partial = '';
        } else if (partial.length < maxLine) {
          partial += ch;
        }
      }
    },
    end() {
      if (partial.length > 0) onLine(partial);
      partial = '';
    },
  };
}

function checkArg(value: unknown, what: string): asserts value is string {
  if (typeof value !== 'string') throw new ExecUsageError(`${what} must be a string`);
  // NUL would be rejected by the kernel (or silently truncate the string); a newline in an
  // argv never comes from a validated name, and forges lines in tools that log their arguments.
  if (value.includes('\0')) throw new ExecUsageError(`${what} contains a NUL byte`);
  if (value.includes('\n') || value.includes('\r')) throw new ExecUsageError(`${what} contains a line break`);
}

function abortKind(signal: AbortSignal): 'timeout' | 'cancelled' {
  const reason: unknown = signal.reason;
  if (reason instanceof Error && reason.name === 'TimeoutError') return 'timeout';
  if (typeof reason === 'object' && reason !== null && 'code' in reason && reason.code === 'DEADLINE_EXCEEDED') return 'timeout';
  return 'cancelled';
}

function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    // Negative pid: the whole process group (the child leads its own, see `detached`).
    process.kill(-pid, signal);
  } catch {
    // ESRCH: the group is already gone.
  }
}

function positive(value: number, name: string): void {
  if (!Number.isFinite(value) || value <= 0) throw new ExecUsageError(`${name} must be a positive number`);
}

export function createExecutor(options: ExecutorOptions): Executor {
  const { backend } = options;
  const binaries = new Map<string, string>();
  for (const [name, path] of Object.entries(options.binaries)) {
    checkArg(path, `binary path for ${name}`);
    if (!isAbsolute(path)) throw new ExecUsageError(`binary path for ${name} must be absolute, got a relative path`);
    binaries.set(name, path);
  }
  positive(options.maxConcurrent, 'maxConcurrent');
  positive(options.defaultTimeoutMs, 'defaultTimeoutMs');
  positive(options.maxOutputBytes, 'maxOutputBytes');
  if (!Number.isFinite(options.killGraceMs) || options.killGraceMs < 0) throw new ExecUsageError('killGraceMs must be a non-negative number');
  for (const name of options.envAllowList) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new ExecUsageError(`invalid environment variable name in envAllowList`);
  }
  const extraEnv: Record<string, string> = { LC_ALL: 'C', ...options.extraEnv };
  for (const [name, value] of Object.entries(extraEnv)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) throw new ExecUsageError(`invalid environment variable name in extraEnv`);
    checkArg(value, `extraEnv.${name}`);
  }

  const metrics = execMetrics(options.registry);
  // Exported at 0 from the start, so an alert's increase() sees the first error.
  metrics.connectionErrors.inc({ backend_service: backend }, 0);
  const slots = new Semaphore(options.maxConcurrent);
  let spawned = 0;

  const buildEnv = (): NodeJS.ProcessEnv => childEnvironment(options.envAllowList, extraEnv);

  function observe(command: string, result: string, startedAt: number): void {
    metrics.duration.observe({ backend_service: backend, command, result }, (performance.now() - startedAt) / 1000);
  }

  async function run(command: string, args: readonly string[], opts: RunOptions = {}): Promise<ExecResult> {
    const path = binaries.get(command);
    if (path === undefined) throw new ExecUsageError(`unknown command ${JSON.stringify(command)} for backend ${backend}`);
    if (!Array.isArray(args)) throw new ExecUsageError('args must be an array');
    const argv = args.map((a: unknown, i) => {
      checkArg(a, `argument ${i} of ${command}`);
      return a;
    });
    const timeoutMs = opts.timeoutMs ?? options.defaultTimeoutMs;
    positive(timeoutMs, 'timeoutMs');
    const { signal } = opts;

    await slots.acquire(signal, () => new ExecError({ kind: signal ? abortKind(signal) : 'cancelled', backend, command, args: argv }));
    try {
      return await spawnAndWait(command, path, argv, timeoutMs, opts);
    } finally {
      slots.release();
    }
  }

  function spawnAndWait(command: string, path: string, args: string[], timeoutMs: number, opts: RunOptions): Promise<ExecResult> {
    const { signal } = opts;
    if (signal?.aborted) return Promise.reject(new ExecError({ kind: abortKind(signal), backend, command, args }));

    return new Promise<ExecResult>((resolve, reject) => {
      const startedAt = performance.now();
      const stdout = new CappedBuffer(options.maxOutputBytes);
      const stderr = new CappedBuffer(options.maxOutputBytes);
      const decoder = new StringDecoder('utf8');
      const stdoutDecoder = new StringDecoder('utf8');
      const lines = opts.onStderrLine ? lineSplitter(opts.onStderrLine, options.maxOutputBytes) : undefined;
      const timers: NodeJS.Timeout[] = [];
      let settled = false;
      let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
      let terminating: 'timeout' | 'cancelled' | undefined;
      let forced = false;
      const onAbort = () => {
        if (signal) terminate(abortKind(signal));
      };

      traceSpawn({ backend, command, path, args });
      options.onSpawn?.({ backend, command, path, args });
      spawned++;
      totalSpawned++;

      let child: ChildProcess;
      try {
        child = spawn(path, args, {
          shell: false,
          // A new session and process group: killing -pid reaches every descendant, and no controlling terminal (nothing can prompt).
          detached: true,
          env: buildEnv(),
          stdio: [opts.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
          windowsHide: true,
        });
      } catch (err) {
        fail(spawnError(err));
        return;
      }

      signal?.addEventListener('abort', onAbort, { once: true });
      timers.push(setTimeout(() => terminate('timeout'), timeoutMs));

      if (opts.stdin && child.stdin) {
        // EPIPE when the child exits without reading: its exit code tells the story.
        child.stdin.on('error', () => undefined);
        child.stdin.end(opts.stdin);
      }
      child.stdout?.on('data', (chunk: Buffer) => {
        stdout.push(chunk);
        if (opts.onStdoutChunk) {
          const text = stdoutDecoder.write(chunk);
          safely(() => opts.onStdoutChunk?.(text));
        }
      });
      child.stderr?.on('data', (chunk: Buffer) => {
        stderr.push(chunk);
        if (!opts.onStderrChunk && !lines) return;
        const text = decoder.write(chunk);
        safely(() => opts.onStderrChunk?.(text));
        safely(() => lines?.push(text));
      });

      child.on('error', (err) => {
        // Spawn failures (ENOENT, EACCES) arrive here with no pid.
        if (child.pid === undefined) fail(spawnError(err));
      });
      child.on('exit', (code, sig) => {
        exited = { code, signal: sig };
        // The leader is gone but a descendant may still hold our pipes: after the grace period, clear the
        // group (ESRCH when it is already empty), and stop waiting for a process that escaped it (setsid).
        const pid = child.pid;
        timers.push(
          setTimeout(() => {
            if (pid !== undefined) killGroup(pid, 'SIGKILL');
            timers.push(setTimeout(forceClose, 1000));
          }, options.killGraceMs + 50),
        );
      });
      child.on('close', () => finish());

      function terminate(kind: 'timeout' | 'cancelled'): void {
        if (settled || terminating || exited || child.pid === undefined) return;
        terminating = kind;
        const pid = child.pid;
        killGroup(pid, 'SIGTERM');
        timers.push(
          setTimeout(() => {
            // Also reaches descendants that ignored SIGTERM after the leader died.
            killGroup(pid, 'SIGKILL');
            // A process that left the group (setsid) may hold the pipes: do not wait for it forever.
            timers.push(setTimeout(forceClose, 1000));
          }, options.killGraceMs),
        );
      }

      function forceClose(): void {
        if (settled) return;
        forced = true;
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish();
      }

      function cleanup(): void {
        settled = true;
        for (const t of timers) clearTimeout(t);
        signal?.removeEventListener('abort', onAbort);
      }

      function fail(err: ExecError): void {
        if (settled) return;
        cleanup();
        if (err.kind === 'unavailable') metrics.connectionErrors.inc({ backend_service: backend });
        observe(command, err.kind, startedAt);
        reject(err);
      }

      function finish(): void {
        if (settled) return;
        if (child.pid === undefined) return; // a spawn failure: the 'error' handler settles
        if (opts.onStdoutChunk) {
          const rest = stdoutDecoder.end();
          if (rest.length > 0) safely(() => opts.onStdoutChunk?.(rest));
        }
        if (opts.onStderrChunk || lines) {
          const rest = decoder.end();
          if (rest.length > 0) safely(() => opts.onStderrChunk?.(rest));
          safely(() => lines?.push(rest));
          safely(() => lines?.end());
        }
        const durationMs = performance.now() - startedAt;
        const exit = exited ?? { code: child.exitCode, signal: child.signalCode };
        const code = exit.code ?? 128 + (exit.signal ? osConstants.signals[exit.signal] : 0);
        const stderrText = stderr.text();
        if (terminating) {
          fail(new ExecError({ kind: terminating, backend, command, args, exitCode: exit.code, stderr: stderrText }));
          return;
        }
        cleanup();
        observe(command, code === 0 ? 'ok' : 'error', startedAt);
        resolve({
          command,
          code,
          signal: exit.signal,
          stdout: stdout.text(),
          stderr: stderrText,
          // `forced`: we stopped reading before the pipes closed, so output may be missing.
          truncated: stdout.truncated || stderr.truncated || forced,
          durationMs,
        });
      }

      function spawnError(err: unknown): ExecError {
        const errno = (err as NodeJS.ErrnoException | undefined)?.code;
        // A missing or non-executable binary means the tool is not installed here: the backend is unavailable.
        const kind: ExecErrorKind = errno === 'ENOENT' || errno === 'EACCES' || errno === 'ENOTDIR' ? 'unavailable' : 'failed';
        return new ExecError({ kind, backend, command, args, cause: err });
      }
    });
  }

  function check(result: ExecResult, rules: readonly ClassifyRule[] = []): ExecResult {
    const err = classify(result, rules, backend);
    if (!err) return result;
    if (err.kind === 'unavailable') metrics.connectionErrors.inc({ backend_service: backend });
    throw err;
  }

  function stream(command: string, args: readonly string[], opts: StreamOptions): StreamHandle {
    const path = binaries.get(command);
    if (path === undefined) throw new ExecUsageError(`unknown command ${JSON.stringify(command)} for backend ${backend}`);
    const argv = args.map((a: unknown, i) => {
      checkArg(a, `argument ${i} of ${command}`);
      return a;
    });
    traceSpawn({ backend, command, path, args: argv });
    options.onSpawn?.({ backend, command, path, args: argv });
    spawned++;
    totalSpawned++;
    let child: ChildProcess;
    try {
      child = spawn(path, argv, { shell: false, detached: true, env: buildEnv(), stdio: ['ignore', 'pipe', 'pipe'], windowsHide: true });
    } catch (err) {
      const exited = Promise.resolve<StreamExit>({ code: null, signal: null, error: streamSpawnError(command, argv, err) });
      return { pid: undefined, exited, stop: () => exited };
    }
    const out = lineSplitter((line) => safely(() => opts.onStdoutLine(line)), options.maxOutputBytes);
    const err = lineSplitter((line) => safely(() => opts.onStderrLine?.(line)), options.maxOutputBytes);
    const outDecoder = new StringDecoder('utf8');
    const errDecoder = new StringDecoder('utf8');
    child.stdout?.on('data', (chunk: Buffer) => out.push(outDecoder.write(chunk)));
    child.stderr?.on('data', (chunk: Buffer) => err.push(errDecoder.write(chunk)));
    const exited = new Promise<StreamExit>((resolve) => {
      child.on('error', (e) => {
        // Spawn failures (ENOENT, EACCES) arrive here with no pid, and no 'close' follows.
        if (child.pid === undefined) resolve({ code: null, signal: null, error: streamSpawnError(command, argv, e) });
      });
      child.on('close', (code, signal) => {
        out.push(outDecoder.end());
        out.end();
        err.push(errDecoder.end());
        err.end();
        resolve({ code, signal });
      });
    });
    let stopping: Promise<StreamExit> | undefined;
    const stop = (): Promise<StreamExit> => {
      if (stopping) return stopping;
      const pid = child.pid;
      if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return (stopping = exited);
      killGroup(pid, 'SIGTERM');
      const timer = setTimeout(() => killGroup(pid, 'SIGKILL'), options.killGraceMs);
      return (stopping = exited.finally(() => clearTimeout(timer)));
    };
    return { pid: child.pid, exited, stop };
  }

  function streamSpawnError(command: string, args: readonly string[], err: unknown): ExecError {
    const errno = (err as NodeJS.ErrnoException | undefined)?.code;
    const kind: ExecErrorKind = errno === 'ENOENT' || errno === 'EACCES' || errno === 'ENOTDIR' ? 'unavailable' : 'failed';
    if (kind === 'unavailable') metrics.connectionErrors.inc({ backend_service: backend });
    return new ExecError({ kind, backend, command, args, cause: err });
  }

  return {
    backend,
    run,
    check,
    stream,
    get stats() {
      return { spawned, running: slots.running, queued: slots.queued };
    },
  };
}

/** Caller callbacks must not break the child's bookkeeping. */
function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // A throwing progress or line callback loses its own update, nothing else.
  }
}
