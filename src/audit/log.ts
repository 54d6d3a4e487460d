// The audit log writer: one JSON line per event, HMAC-chained, fsynced, rotated daily.
//
// All writes go through one queue and one writer loop, so the file order is the chain
// order. A batch is everything queued when the loop takes it: the lines get their seq,
// the batch one MAC (chain.ts), it is written with one write(2) where possible, and
// fdatasync'ed once (group commit). Durable callers are resolved only after that fsync; buffered events
// are flushed at least every fsyncIntervalMs. The chain state (seq, prev hmac) only
// advances once a batch is on disk, so a failed batch leaves no hole in the chain
// (its bytes are truncated away again).
//
// Every file that does not start the chain (seq 1) starts with a link record: a SECURITY
// event naming the seq it continues from (CHAIN_LINK), written by this log when it starts
// a file (its own rotation, a start on an empty file, or a reopen after another program
// renamed or removed the file). `audit verify` accepts a chain that starts mid-way only
// at such a record.
//
// Once per checkIntervalMs, and before every batch with a durable write, the log checks
// that its path still names the file it writes (logrotate may have renamed or removed
// it) and reopens it if not; and it watches the free space of the audit filesystem.
import { randomBytes } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, statfs, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { CHAIN_GENESIS, CHAIN_LINK, chainKey, type ChainLinkDetails, EventBuffer, isSeal, parseLine, sealBatch, sealCapacity, type ChainKey, type ParsedLine, type SealLine } from './chain.js';
import { appendEvent, type AuditEventInput } from './event.js';
import { appendEventFast } from './event-fast.js';
import { localDay, rotatedFiles, rotatedName } from './files.js';
import { DEFAULT_FLOOD_LIMITS, FloodLimiter, isUnauthenticated, type FloodLimits } from './flood.js';
import { loadOrCreateHmacKey } from './key.js';
import { scrubSecretsInJson } from './redact.js';

export const DEFAULT_AUDIT_LOG_PATH = '/var/log/debvisor/rpc-audit.log';
export const DEFAULT_AUDIT_KEY_PATH = '/etc/debvisor/rpc/audit-hmac.key';

export type AuditWriteOperation = 'serialize' | 'write' | 'fsync' | 'overflow' | 'closed';

/** A write that did not reach stable storage. `events` is how many events it lost. */
export class AuditWriteError extends Error {
  constructor(
    message: string,
    readonly operation: AuditWriteOperation,
    readonly events: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'AuditWriteError';
  }
}

/** The log cannot be opened (key, permissions, or a damaged last entry). */
export class AuditOpenError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AuditOpenError';
  }
}

export interface AuditLogOptions {
  /** Current file; rotated files go next to it. */
  path: string;
  /** HMAC key file (mode 0600); created with a random key if missing. */
  hmacKeyFile: string;
  /** Rotated files to keep (default 30); older ones are deleted. */
  retainFiles?: number;
  /** Longest time a buffered event waits for write + fsync (default 100). */
  fsyncIntervalMs?: number;
  now?: () => Date;
  /** Called once per failed batch (write or fsync), for dropped and unserializable events. */
  onWriteFailure?: (err: AuditWriteError) => void;
  /** Rotation, retention and recovery problems that lose no event. */
  onWarning?: (message: string, err?: unknown) => void;
  /** Queue bound (default 100000): beyond it events are refused with operation 'overflow'. */
  maxPendingEvents?: number;
  /** Per-source limit on records of unauthenticated calls and AUTH_FAILED (default DEFAULT_FLOOD_LIMITS). */
  floodLimits?: FloodLimits;
  /** Free bytes on the audit filesystem below which it counts as low on space (default 0: never; the daemon's config: 1 GiB). */
  reserveBytes?: number;
  /** How often the file's identity and the free space are checked (default 1000). */
  checkIntervalMs?: number;
  /** Records of unauthenticated callers dropped (rate limit or low space); each is also in a summary record. */
  onDropped?: (count: number) => void;
  /** Free bytes of the audit filesystem, at every check; `low` when below reserveBytes. */
  onFreeSpace?: (freeBytes: number, low: boolean) => void;
  /** The file was renamed, removed or truncated by another program, and reopened. */
  onReopen?: () => void;
  /**
   * Every SECURITY record queued by write() or writeDurable(), including the log's own (low space);
   * not the chain-link record that starts each file. Called synchronously: it must not wait.
   */
  onSecurityRecord?: (event: AuditEventInput) => void;
}

export interface AuditLogStats {
  /** Entries on disk written by this instance. */
  entries: number;
  batches: number;
  fsyncs: number;
  failedBatches: number;
  /** Events that never reached the disk (failed batches, overflow, serialization). */
  lostEvents: number;
  rotations: number;
  /** Times the file was found renamed, removed or truncated by another program, and reopened. */
  reopens: number;
  /** Records of unauthenticated callers dropped (rate limit, low space). */
  droppedUnauthenticated: number;
  /** Free bytes at the last check (NaN before the first, or when reserveBytes is 0). */
  freeBytes: number;
  lowSpace: boolean;
  /** seq of the last entry on disk (0 if none). */
  lastSeq: number;
}

interface Waiter {
  resolve: () => void;
  reject: (err: AuditWriteError) => void;
}

/**
 * Benchmark switch, read once at start-up: DEBVISOR_AUDIT_SERIALIZER=reference writes every
 * line with the reference serializer, anything else with its byte-level fast path (the
 * same bytes; bench/results-audit.md has the measured difference).
 */
const appendLine = process.env.DEBVISOR_AUDIT_SERIALIZER === 'reference' ? appendEvent : appendEventFast;

// Flush early when this much is buffered, instead of waiting for the timer.
const FLUSH_BYTES = 1 << 20;
/** Largest batch laid out in the reused seal buffer; a bigger one (a burst) gets its own. */
const SEAL_SCRATCH_LIMIT = 4 * FLUSH_BYTES;
const TAIL_CHUNK = 64 * 1024;

/** The end of an audit file, read back to its last sealed entry (the end of its last complete batch). */
interface Tail {
  size: number;
  /** The last entry that seals a batch, if any. */
  seal?: SealLine;
  /** Offset just after the seal's line (and its newline, if it has one); 0 without a seal. */
  sealEnd: number;
  /** False when the seal is the file's last line and lacks its newline. */
  sealTerminated: boolean;
  /** Newline-terminated lines after the seal, newest first: an interrupted batch, or damage. */
  after: string[];
  /** Bytes after the last newline ('' if the file ends with a newline). */
  torn: string;
}

async function readTail(path: string): Promise<Tail> {
  const handle = await open(path, 'r');
  try {
    const size = (await handle.stat()).size;
    // Read a growing window from the end until it holds a seal or the whole file.
    for (let window = TAIL_CHUNK; ; window *= 2) {
      const start = Math.max(0, size - window);
      const buf = Buffer.alloc(size - start);
      const { bytesRead } = await handle.read(buf, 0, buf.length, start);
      if (bytesRead !== buf.length) throw new Error(`short read from ${path}`);
      const lastNl = buf.lastIndexOf(10);
      const torn = lastNl < 0 ? buf.toString('utf8') : buf.toString('utf8', lastNl + 1);
      if (lastNl < 0 && start > 0) continue;
      if (torn !== '' && (lastNl >= 0 || start === 0)) {
        const parsed = parseLine(torn);
        if (isSeal(parsed)) return { size, seal: parsed, sealEnd: size, sealTerminated: false, after: [], torn };
      }
      const after: string[] = [];
      for (let lineEnd = lastNl; lineEnd >= 0; ) {
        // (lastIndexOf with a negative offset would search from the end.)
        const prevNl = lineEnd === 0 ? -1 : buf.lastIndexOf(10, lineEnd - 1);
        if (prevNl < 0 && start > 0) break; // the window starts mid-line: widen it
        const line = buf.toString('utf8', prevNl + 1, lineEnd);
        const parsed = parseLine(line);
        if (isSeal(parsed)) return { size, seal: parsed, sealEnd: start + lineEnd + 1, sealTerminated: true, after, torn };
        after.push(line);
        lineEnd = prevNl;
      }
      if (start === 0) return { size, sealEnd: 0, sealTerminated: true, after, torn };
    }
  } finally {
    await handle.close();
  }
}

function randomTraceId(): string {
  return randomBytes(16).toString('hex');
}

function linkReason(link: ChainLinkDetails): string {
  const from = `the chain continues from seq ${link.continues_from_seq}${link.previous_file === undefined ? '' : ` in ${link.previous_file}`}`;
  switch (link.cause) {
    case 'rotation':
      return `audit log rotated; ${from}`;
    case 'start':
      return `audit log file started; ${from}`;
    case 'truncated':
      return `audit log file was truncated by another program; ${from}`;
    default:
      return `audit log file was ${link.cause} by another program and reopened; ${from}`;
  }
}

/** The name of the file in `dir` with this inode, if any (where a renamed log went). */
async function findByInode(dir: string, ino: number, dev: number): Promise<string | undefined> {
  for (const name of await readdir(dir)) {
    const st = await lstat(join(dir, name)).catch(() => undefined);
    if (st?.ino === ino && st.dev === dev) return name;
  }
  return undefined;
}

async function lastByte(handle: FileHandle, size: number): Promise<number> {
  const byte = Buffer.alloc(1);
  await handle.read(byte, 0, 1, size - 1);
  return byte[0] ?? 0;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function dayOf(entry: ParsedLine | undefined): string | undefined {
  const time = entry?.entry.time;
  if (typeof time !== 'string') return undefined;
  const date = new Date(time);
  return Number.isNaN(date.getTime()) ? undefined : localDay(date);
}

interface ChainState {
  seq: number;
  prevHmac: string;
  size: number;
  needsNewline: boolean;
  fileDay: string;
}

export class AuditLog {
  private readonly now: () => Date;
  private readonly retainFiles: number;
  private readonly fsyncIntervalMs: number;
  private readonly maxPending: number;
  private readonly onWriteFailure: (err: AuditWriteError) => void;
  private readonly onWarning: (message: string, err?: unknown) => void;
  private readonly customClock: boolean;
  private lastTimeMs = NaN;
  private lastTimeIso = '';
  private lastSecond = NaN;
  /** "YYYY-MM-DDTHH:MM:SS." of lastSecond. */
  private lastSecondPrefix = '';
  /** The event time: with the real clock, one Date and ISO string per second, the milliseconds appended. */
  private readonly defaultTime = (): string => {
    if (this.customClock) return this.now().toISOString();
    const ms = Date.now();
    if (ms !== this.lastTimeMs) {
      this.lastTimeMs = ms;
      const second = Math.floor(ms / 1000);
      if (second !== this.lastSecond) {
        this.lastSecond = second;
        const iso = new Date(second * 1000).toISOString();
        this.lastSecondPrefix = iso.slice(0, iso.length - 4);
      }
      const milli = ms - second * 1000;
      this.lastTimeIso = `${this.lastSecondPrefix}${milli < 10 ? '00' : milli < 100 ? '0' : ''}${milli}Z`;
    }
    return this.lastTimeIso;
  };

  private seq: number;
  private prevHmac: string;
  private size: number;
  private needsNewline: boolean;
  private needsResync = false;
  private fileDay: string;
  /** Set when the next batch starts a file that does not start the chain: it gets a link record first. */
  private link: Omit<ChainLinkDetails, 'continues_from_seq'> | undefined;
  private lastFileCheck = 0;
  private readonly checkIntervalMs: number;
  private readonly reserveBytes: number;
  private readonly flood: FloodLimiter;
  private readonly onDropped: (count: number) => void;
  private readonly onFreeSpace: (freeBytes: number, low: boolean) => void;
  private readonly onReopen: () => void;
  private readonly onSecurityRecord: (event: AuditEventInput) => void;
  private checkTimer: NodeJS.Timeout | undefined;
  /** Inode of a non-file found at the path, already warned about. */
  private refusedPath: number | undefined;
  private floodTimer: NodeJS.Timeout | undefined;

  private pending = new EventBuffer();
  /** The previous batch's buffer, cleared, for the next swap. */
  private spare: EventBuffer | undefined;
  /** Where batches are laid out for writing (see commit). */
  private sealScratch: Buffer | undefined;
  private waiters: Waiter[] = [];
  private barriers: Array<() => void> = [];
  private flushRequested = false;
  private running = false;
  private inflight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly counters: AuditLogStats;

  private constructor(
    readonly path: string,
    private readonly key: ChainKey,
    private fd: FileHandle,
    private readonly fileRegular: boolean,
    state: ChainState,
    options: AuditLogOptions,
  ) {
    this.now = options.now ?? (() => new Date());
    this.customClock = options.now !== undefined;
    this.retainFiles = options.retainFiles ?? 30;
    this.fsyncIntervalMs = options.fsyncIntervalMs ?? 100;
    this.maxPending = options.maxPendingEvents ?? 100_000;
    this.onWriteFailure = options.onWriteFailure ?? (() => undefined);
    this.onWarning = options.onWarning ?? (() => undefined);
    this.seq = state.seq;
    this.prevHmac = state.prevHmac;
    this.size = state.size;
    this.needsNewline = state.needsNewline;
    this.fileDay = state.fileDay;
    this.checkIntervalMs = options.checkIntervalMs ?? 1000;
    this.reserveBytes = options.reserveBytes ?? 0;
    this.flood = new FloodLimiter(options.floodLimits ?? DEFAULT_FLOOD_LIMITS);
    this.onDropped = options.onDropped ?? (() => undefined);
    this.onFreeSpace = options.onFreeSpace ?? (() => undefined);
    this.onReopen = options.onReopen ?? (() => undefined);
    this.onSecurityRecord = options.onSecurityRecord ?? (() => undefined);
    // A file that does not start the chain starts with a link record.
    if (fileRegular && state.size === 0 && state.seq > 0) this.link = { cause: 'start' };
    this.counters = {
      entries: 0,
      batches: 0,
      fsyncs: 0,
      failedBatches: 0,
      lostEvents: 0,
      rotations: 0,
      reopens: 0,
      droppedUnauthenticated: 0,
      freeBytes: Number.NaN,
      lowSpace: false,
      lastSeq: state.seq,
    };
  }

  /** The timers of the file check and of the flood summaries; unref'ed, stopped by close(). */
  private startTimers(): void {
    this.checkTimer = setInterval(() => void this.checkWhileIdle(), this.checkIntervalMs);
    this.checkTimer.unref();
    this.floodTimer = setInterval(() => this.summarizeDropped(), this.flood.limits.intervalMs);
    this.floodTimer.unref();
  }

  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const { path } = options;
    const retain = options.retainFiles ?? 30;
    if (!Number.isInteger(retain) || retain < 0) throw new RangeError('retainFiles must be an integer >= 0');
    const interval = options.fsyncIntervalMs ?? 100;
    if (!Number.isFinite(interval) || interval < 0) throw new RangeError('fsyncIntervalMs must be >= 0');
    const check = options.checkIntervalMs ?? 1000;
    if (!Number.isFinite(check) || check <= 0) throw new RangeError('checkIntervalMs must be > 0');
    const flood = options.floodLimits ?? DEFAULT_FLOOD_LIMITS;
    if (!(flood.recordsPerSource >= 0 && flood.intervalMs > 0 && flood.maxSources >= 1)) throw new RangeError('floodLimits: recordsPerSource >= 0, intervalMs > 0, maxSources >= 1');
    const now = options.now ?? (() => new Date());
    const warn = options.onWarning ?? (() => undefined);

    const key = chainKey(await loadOrCreateHmacKey(options.hmacKeyFile));
    await mkdir(dirname(path), { recursive: true, mode: 0o750 });
    const fd = await open(path, 'a', 0o600);
    try {
      const st = await fd.stat();
      const fileRegular = st.isFile();
      const state: ChainState = { seq: 0, prevHmac: CHAIN_GENESIS, size: fileRegular ? st.size : 0, needsNewline: false, fileDay: localDay(now()) };
      let last: SealLine | undefined;
      if (fileRegular && st.size > 0) {
        const recovered = await recoverCurrentTail(path, fd, warn);
        last = recovered.last;
        state.size = recovered.size;
        state.needsNewline = recovered.needsNewline;
        if (last) state.fileDay = dayOf(last) ?? localDay(st.mtime);
      }
      const newest = (await rotatedFiles(path)).at(-1);
      if (newest) {
        last ??= await lastEntryOf(newest.path);
        // Rotated names never go backwards in time, so name order stays chain order.
        if (newest.day > state.fileDay) state.fileDay = newest.day;
      }
      if (last) {
        state.seq = last.seq;
        state.prevHmac = last.hmac;
      }
      const log = new AuditLog(path, key, fd, fileRegular, state, options);
      await log.applyRetention();
      await log.checkSpace();
      log.startTimers();
      return log;
    } catch (err) {
      await fd.close().catch(() => undefined);
      throw err;
    }
  }

  /** Counters for tests and metrics. */
  get stats(): Readonly<AuditLogStats> {
    return { ...this.counters };
  }

  /**
   * For reads: buffered, on disk (fsynced) within fsyncIntervalMs. Never throws;
   * failures go to onWriteFailure.
   */
  write(event: AuditEventInput): void {
    if (isUnauthenticated(event) && !this.flood.admit(event.source, this.counters.lowSpace)) {
      this.counters.droppedUnauthenticated++;
      this.onDropped(1);
      return;
    }
    this.writeBuffered(event);
  }

  /** write() without the flood limit. */
  private writeBuffered(event: AuditEventInput): void {
    const refused = this.refusal() ?? this.append(event);
    if (refused) {
      this.fail(refused);
      return;
    }
    if (this.pending.byteLength >= FLUSH_BYTES) this.kick();
    else this.schedule();
  }

  /**
   * For mutating calls: resolves once the entry is written and fdatasync'ed. Concurrent
   * calls share one write and one fsync. Rejects with AuditWriteError otherwise.
   */
  writeDurable(event: AuditEventInput): Promise<void> {
    const refused = this.refusal() ?? this.append(event);
    if (refused) {
      this.counters.lostEvents++;
      return Promise.reject(refused);
    }
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ resolve, reject });
      this.kick();
    });
  }

  /** Resolves once everything written so far is on disk, or has failed (and been reported). */
  flush(): Promise<void> {
    if (this.pending.count > 0) {
      return new Promise<void>((resolve) => {
        this.barriers.push(resolve);
        this.kick();
      });
    }
    return this.inflight ?? Promise.resolve();
  }

  /** Flushes, fsyncs and closes. Later writes fail with operation 'closed'. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.checkTimer);
      clearInterval(this.floodTimer);
      this.summarizeDropped();
      this.closed = true;
      await this.flush();
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      await this.fd.close();
    })();
    return this.closing;
  }

  /** Queues the event's line; the error if it cannot be serialized (nothing is queued then). */
  private append(event: AuditEventInput): AuditWriteError | undefined {
    try {
      appendLine(this.pending, event, this.defaultTime, scrubSecretsInJson);
    } catch (err) {
      return new AuditWriteError(`audit event cannot be serialized: ${errorMessage(err)}`, 'serialize', 1, { cause: err });
    }
    if (event.type === 'SECURITY') {
      try {
        this.onSecurityRecord(event);
      } catch {
        // An observer must not break the writer.
      }
    }
    return undefined;
  }

  private refusal(): AuditWriteError | undefined {
    if (this.closed) return new AuditWriteError('audit log is closed', 'closed', 1);
    if (this.pending.count >= this.maxPending) {
      return new AuditWriteError(`audit log backlog is full (${this.maxPending} events waiting for the disk)`, 'overflow', 1);
    }
    return undefined;
  }

  private fail(err: AuditWriteError): void {
    this.counters.lostEvents += err.events;
    this.report(err);
  }

  private report(err: AuditWriteError): void {
    try {
      this.onWriteFailure(err);
    } catch {
      // A failing failure handler must not break the writer.
    }
  }

  private schedule(): void {
    if (this.running || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.kick();
    }, this.fsyncIntervalMs);
    this.timer.unref();
  }

  private kick(): void {
    this.flushRequested = true;
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.running) return;
    this.running = true;
    // Start on a microtask so that calls made in the same tick join the first batch.
    queueMicrotask(() => void this.drain());
  }

  private async drain(): Promise<void> {
    try {
      while (this.pending.count > 0 && this.flushRequested) {
        this.flushRequested = false;
        const events = this.pending;
        const waiters = this.waiters;
        const barriers = this.barriers;
        this.pending = this.spare ?? new EventBuffer();
        this.spare = undefined;
        this.waiters = [];
        this.barriers = [];
        this.inflight = this.commit(events, waiters);
        await this.inflight;
        this.inflight = undefined;
        events.clear();
        if (events.capacity <= 4 * FLUSH_BYTES) this.spare = events;
        for (const resolve of barriers) resolve();
        if (this.waiters.length > 0 || this.barriers.length > 0 || this.closed) this.flushRequested = true;
      }
    } finally {
      this.release();
    }
  }

  /** Ends a turn of the writer (drain or an idle check): the next batch is started or scheduled. */
  private release(): void {
    this.running = false;
    if (this.pending.count > 0) {
      if (this.flushRequested) this.kick();
      else this.schedule();
    }
  }

  /** The timer's check: free space always; the file when the writer is idle (else commit checks it). */
  private async checkWhileIdle(): Promise<void> {
    await this.checkSpace();
    if (this.running || this.closed) return;
    this.running = true;
    try {
      this.inflight = this.checkFile();
      await this.inflight;
      if (this.link) {
        // Written at once: the SECURITY event of a reopen must not wait for the next call.
        this.inflight = this.writeLink().catch((err: unknown) => this.onWarning(`audit log ${this.path}: cannot write the chain link record yet; the next batch retries`, err));
        await this.inflight;
      }
    } finally {
      this.inflight = undefined;
      this.release();
    }
  }

  /**
   * Reopens the file when its path no longer names it, or when it was truncated: another
   * program (logrotate) renamed, removed or truncated it. The chain continues in the file
   * now at the path, from a link record (a SECURITY event). Runs only while no batch is
   * being written. Never throws: problems are warnings, and the writes go on where they can.
   */
  private async checkFile(): Promise<void> {
    this.lastFileCheck = Date.now();
    if (!this.fileRegular) return;
    try {
      const own = await this.fd.stat();
      const onDisk = await lstat(this.path).catch((err: unknown) => {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw err;
      });
      if (onDisk?.ino === own.ino && onDisk.dev === own.dev) {
        if (own.size >= this.size) return;
        // Truncated in place (logrotate copytruncate): the file no longer starts the chain where it did.
        this.size = own.size;
        this.needsNewline = own.size > 0;
        this.link = { cause: 'truncated' };
        this.noteReopen(`audit log ${this.path} was truncated by another program; the chain continues from a link record`);
        return;
      }
      if (onDisk && !onDisk.isFile()) {
        // Never follow what replaced it (a symlink could point anywhere): stay in the old file.
        if (this.refusedPath !== onDisk.ino) this.onWarning(`audit log ${this.path} was replaced by something that is not a regular file; still writing to the old file`);
        this.refusedPath = onDisk.ino;
        return;
      }
      const cause: ChainLinkDetails['cause'] = own.nlink === 0 ? 'removed' : 'renamed';
      const previous = cause === 'renamed' ? await findByInode(dirname(this.path), own.ino, own.dev) : undefined;
      const fresh = await open(this.path, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
      let size: number;
      let needsNewline: boolean;
      try {
        size = (await fresh.stat()).size;
        needsNewline = size > 0 && (await lastByte(fresh, size)) !== 0x0a;
      } catch (err) {
        await fresh.close().catch(() => undefined);
        throw err;
      }
      const old = this.fd;
      this.fd = fresh;
      this.size = size;
      this.needsNewline = needsNewline;
      this.link = { cause, ...(previous === undefined ? {} : { previous_file: previous }) };
      await old.close().catch((err: unknown) => this.onWarning('audit log: closing the old file failed', err));
      await syncDir(dirname(this.path)).catch((err: unknown) => this.onWarning('audit log: fsync of the log directory failed', err));
      this.noteReopen(
        `audit log ${this.path} was ${cause} by another program${previous === undefined ? '' : ` (now ${previous})`}; reopened it, the chain continues from a link record`,
      );
    } catch (err) {
      this.onWarning(`audit log ${this.path}: cannot check or reopen the file; still writing to the open one`, err);
    }
  }

  private noteReopen(message: string): void {
    this.counters.reopens++;
    this.onWarning(message);
    try {
      this.onReopen();
    } catch {
      // An observer must not break the writer.
    }
  }

  /**
   * Writes the link record as a batch of its own when the file does not start the chain
   * (see CHAIN_LINK). Throws when the write fails; the link is then still due.
   */
  private async writeLink(): Promise<void> {
    const link = this.link;
    if (!link) return;
    const details: ChainLinkDetails = { continues_from_seq: this.seq, ...link };
    const events = new EventBuffer();
    appendLine(events, { type: 'SECURITY', trace_id: randomTraceId(), reason: linkReason(details), details: { [CHAIN_LINK]: details } }, this.defaultTime, scrubSecretsInJson);
    const sealed = sealBatch(this.key, this.prevHmac, events, this.seq + 1, this.needsNewline ? '\n' : '');
    try {
      await this.writeFully(sealed.data);
      await this.fd.datasync();
    } catch (err) {
      await this.rollBack();
      throw err;
    }
    this.counters.fsyncs++;
    this.counters.entries++;
    this.seq++;
    this.prevHmac = sealed.hmac;
    this.size += sealed.data.length;
    this.needsNewline = false;
    this.counters.lastSeq = this.seq;
    this.link = undefined;
  }

  /** Free space of the audit filesystem: the gauge, and a SECURITY event when it crosses the reserve. */
  private async checkSpace(): Promise<void> {
    if (this.reserveBytes <= 0) return;
    let free: number;
    try {
      const fs = await statfs(dirname(this.path));
      free = fs.bavail * fs.bsize;
    } catch (err) {
      this.onWarning(`audit log ${this.path}: cannot read the free space of its filesystem`, err);
      return;
    }
    const low = free < this.reserveBytes;
    this.counters.freeBytes = free;
    try {
      this.onFreeSpace(free, low);
    } catch {
      // An observer must not break the writer.
    }
    if (low === this.counters.lowSpace || this.closed) return;
    this.counters.lowSpace = low;
    const reason = low
      ? `audit filesystem low on space: ${free} bytes free, below the reserve of ${this.reserveBytes}; records of unauthenticated calls are counted instead of written, and mutating calls will be refused once it is full`
      : `audit filesystem has space again: ${free} bytes free, at least the reserve of ${this.reserveBytes}`;
    this.onWarning(reason);
    this.writeBuffered({ type: 'SECURITY', trace_id: randomTraceId(), reason, details: { free_bytes: free, reserve_bytes: this.reserveBytes } });
  }

  /** One summary record per source whose unauthenticated records were dropped in the interval that ends. */
  private summarizeDropped(): void {
    const { recordsPerSource, intervalMs } = this.flood.limits;
    for (const { source, dropped } of this.flood.endInterval()) {
      this.writeBuffered({
        type: 'SUSPICIOUS',
        trace_id: randomTraceId(),
        source,
        reason: `${dropped} audit records of unauthenticated calls from ${source} were not written: over ${recordsPerSource} per ${intervalMs / 1000} s, or the audit filesystem is low on space`,
        details: { dropped_records: dropped, interval_seconds: intervalMs / 1000, limit_per_source: recordsPerSource },
      });
    }
  }

  /** Writes one batch. Never throws: failures reject the waiters and are reported. */
  private async commit(events: EventBuffer, waiters: Waiter[]): Promise<void> {
    const count = events.count;
    this.counters.batches++;
    let operation: 'write' | 'fsync' = 'write';
    let seq: number;
    let prev: string;
    let length: number;
    try {
      if (this.needsResync) await this.resync();
      // Before every durable write, and at least once per interval.
      if (waiters.length > 0 || Date.now() - this.lastFileCheck >= this.checkIntervalMs) await this.checkFile();
      await this.maybeRotate();
      await this.writeLink();
      seq = this.seq;
      prev = this.prevHmac;
      const lead = this.needsNewline ? '\n' : '';
      // One buffer reused from batch to batch (batches are written one at a time): a fresh
      // half-megabyte per batch is a malloc, page faults and an external-memory hint to V8 each time.
      const needed = sealCapacity(prev, events, lead);
      if (needed <= SEAL_SCRATCH_LIMIT && (this.sealScratch?.length ?? 0) < needed) this.sealScratch = Buffer.allocUnsafe(Math.max(needed, FLUSH_BYTES + FLUSH_BYTES / 2));
      const sealed = sealBatch(this.key, prev, events, seq + 1, lead, this.sealScratch);
      seq += count;
      prev = sealed.hmac;
      const data = sealed.data;
      length = data.length;
      await this.writeFully(data);
      operation = 'fsync';
      await this.fd.datasync();
      this.counters.fsyncs++;
    } catch (err) {
      await this.rollBack();
      const error = new AuditWriteError(`audit log ${operation} failed for ${count} event(s): ${errorMessage(err)}`, operation, count, { cause: err });
      this.counters.failedBatches++;
      this.counters.lostEvents += count;
      for (const waiter of waiters) waiter.reject(error);
      this.report(error);
      return;
    }
    this.seq = seq;
    this.prevHmac = prev;
    this.size += length;
    this.needsNewline = false;
    this.counters.entries += count;
    this.counters.lastSeq = seq;
    for (const waiter of waiters) waiter.resolve();
  }

  private async writeFully(data: Buffer): Promise<void> {
    let offset = 0;
    while (offset < data.length) {
      const { bytesWritten } = await this.fd.write(data, offset, data.length - offset);
      if (bytesWritten <= 0) throw new Error('write made no progress');
      offset += bytesWritten;
    }
  }

  /** After a failed batch: cut its bytes off again so the file ends at the last good entry. */
  private async rollBack(): Promise<void> {
    if (!this.fileRegular) return;
    try {
      await this.fd.truncate(this.size);
    } catch (err) {
      this.needsResync = true;
      this.onWarning(`audit log ${this.path}: cannot truncate a failed write; will resync from the file`, err);
    }
  }

  /** The file may hold part of a failed batch: continue the chain from what is really there. */
  private async resync(): Promise<void> {
    const recovered = await recoverCurrentTail(this.path, this.fd, this.onWarning);
    this.size = recovered.size;
    this.needsNewline = recovered.needsNewline;
    if (recovered.last && recovered.last.seq > this.seq) {
      this.seq = recovered.last.seq;
      this.prevHmac = recovered.last.hmac;
      this.counters.lastSeq = this.seq;
    }
    this.needsResync = false;
  }

  /** Daily rotation, between batches. Problems are warnings: the events still go somewhere. */
  private async maybeRotate(): Promise<void> {
    const today = localDay(this.now());
    // A clock set back does not rotate: the file keeps its (later) day.
    if (today <= this.fileDay) return;
    const fileDay = this.fileDay;
    this.fileDay = today;
    if (!this.fileRegular || (this.size === 0 && !this.needsNewline)) return;
    let target: string;
    try {
      // Only ever rename a regular file, and only the one we are writing to.
      const [onDisk, own] = await Promise.all([lstat(this.path), this.fd.stat()]);
      if (!onDisk.isFile()) return;
      if (onDisk.ino !== own.ino || onDisk.dev !== own.dev) {
        this.onWarning(`audit log ${this.path} was replaced by another file; not rotating it`);
        return;
      }
      target = await this.freeRotatedName(fileDay);
      await rename(this.path, target);
    } catch (err) {
      this.onWarning(`audit log ${this.path}: rotation failed; continuing in the same file`, err);
      return;
    }
    let fresh: FileHandle;
    try {
      fresh = await open(this.path, 'a', 0o600);
    } catch (err) {
      this.onWarning(`audit log ${this.path}: cannot open a new file after rotation; continuing in the rotated one`, err);
      return;
    }
    const old = this.fd;
    this.fd = fresh;
    this.size = 0;
    this.needsNewline = false;
    this.link = { cause: 'rotation', previous_file: basename(target) };
    this.counters.rotations++;
    await old.close().catch((err: unknown) => this.onWarning('audit log: closing the rotated file failed', err));
    await syncDir(dirname(this.path)).catch((err: unknown) => this.onWarning('audit log: fsync of the log directory failed', err));
    await this.applyRetention();
  }

  private async freeRotatedName(day: string): Promise<string> {
    for (let index = 0; ; index++) {
      const candidate = rotatedName(this.path, day, index);
      try {
        await lstat(candidate);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') return candidate;
        throw err;
      }
    }
  }

  /** Deletes the oldest rotated files beyond retainFiles (regular files only). */
  private async applyRetention(): Promise<void> {
    try {
      const files = await rotatedFiles(this.path);
      for (const file of files.slice(0, Math.max(0, files.length - this.retainFiles))) {
        if ((await lstat(file.path)).isFile()) await unlink(file.path);
      }
    } catch (err) {
      this.onWarning(`audit log ${this.path}: retention cleanup failed`, err);
    }
  }
}

/**
 * The last sealed entry of the current file, repairing its end after a crash mid-write:
 * those events were never acknowledged (a batch is acknowledged after its fsync, and it
 * is sealed by its last line). A sealed entry lacking only its newline is kept; a torn
 * line or the entries of a batch without its seal are cut off. Anything else after the
 * last seal is damage: the log refuses to continue the chain over it.
 */
async function recoverCurrentTail(
  path: string,
  fd: FileHandle,
  warn: (message: string, err?: unknown) => void,
): Promise<{ last?: SealLine; size: number; needsNewline: boolean }> {
  const tail = await readTail(path);
  if (tail.seal && !tail.sealTerminated) return { last: tail.seal, size: tail.size, needsNewline: true };
  if (tail.after.some((line) => parseLine(line) === undefined)) {
    throw new AuditOpenError(
      `audit log ${path}: the last line is not a valid audit entry, so the chain cannot be continued; ` +
        'check it with `debvisorctl audit verify` and move the file aside',
    );
  }
  if (tail.size === tail.sealEnd) return { ...(tail.seal ? { last: tail.seal } : {}), size: tail.size, needsNewline: false };
  try {
    await fd.truncate(tail.sealEnd);
    warn(
      `audit log ${path}: removed ${tail.size - tail.sealEnd} bytes after the last sealed entry ` +
        `(an incomplete last line${tail.after.length > 0 ? `, and ${tail.after.length} entries of a batch whose write was interrupted` : ''})`,
    );
    return { ...(tail.seal ? { last: tail.seal } : {}), size: tail.sealEnd, needsNewline: false };
  } catch (err) {
    warn(`audit log ${path}: cannot remove an incomplete last line or batch; it will show in verification`, err);
    return { ...(tail.seal ? { last: tail.seal } : {}), size: tail.size, needsNewline: tail.torn !== '' };
  }
}

async function lastEntryOf(path: string): Promise<SealLine | undefined> {
  const tail = await readTail(path);
  // Rotation happens between batches, so a rotated file ends with a seal.
  if (tail.size > 0 && (!tail.seal || tail.size !== tail.sealEnd)) {
    throw new AuditOpenError(`audit log: ${path} does not end with a sealed audit entry, so the chain cannot be continued; check it with \`debvisorctl audit verify\``);
  }
  return tail.seal;
}
