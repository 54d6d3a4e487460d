// Durable vs buffered writes, group commit, write failures and the HMAC key file.
import { chmodSync, existsSync, lstatSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditKeyError } from '../../src/audit/key.js';
import { AuditLog, AuditWriteError } from '../../src/audit/log.js';
import { verifyAuditFiles } from '../../src/audit/verify.js';
import { Clock, event, keyOf, openLog, parseLines, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => void;
let path: string;

beforeEach(() => {
  ({ dir, cleanup } = tempDir());
  path = join(dir, 'rpc-audit.log');
});
afterEach(() => cleanup());

function traceIdsInFile(): string[] {
  return existsSync(path) ? parseLines(path).map((entry) => entry.trace_id as string) : [];
}

describe('event time', () => {
  it('stamps events from the real clock as ISO 8601 UTC with milliseconds', async () => {
    const log = await openLog(dir);
    const before = Date.now();
    for (let i = 0; i < 300; i++) {
      log.write(event(i));
      if (i % 50 === 0) await new Promise((resolve) => setTimeout(resolve, 3));
    }
    await log.close();
    const after = Date.now();
    for (const entry of parseLines(path)) {
      const time = entry.time as string;
      expect(time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      expect(new Date(time).toISOString()).toBe(time);
      expect(Date.parse(time)).toBeGreaterThanOrEqual(before);
      expect(Date.parse(time)).toBeLessThanOrEqual(after);
    }
  });
});

describe('batch encoding', () => {
  it('writes and verifies non-ASCII content (multi-byte UTF-8) in batches', async () => {
    const log = await openLog(dir);
    const reasons = ['ünïcødé', '😀 emoji', '中文', 'plain', '\u2028 separator', 'quote " and \\ backslash'];
    for (let i = 0; i < 60; i++) log.write(event(i, { reason: reasons[i % reasons.length]! }));
    await log.writeDurable(event(60, { reason: '最後' }));
    await log.close();
    const entries = parseLines(path);
    expect(entries.map((entry) => entry.reason)).toEqual([...Array.from({ length: 60 }, (_, i) => reasons[i % reasons.length]), '最後']);
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 61 });
  });
});

describe('writeDurable', () => {
  it('resolves only once the line is in the file', async () => {
    const log = await openLog(dir, { fsyncIntervalMs: 10_000 });
    for (let i = 1; i <= 5; i++) {
      const pending = log.writeDurable(event(i));
      expect(traceIdsInFile()).not.toContain(`trace-${i}`);
      await pending;
      expect(traceIdsInFile()).toContain(`trace-${i}`);
    }
    expect(log.stats.fsyncs).toBe(5);
    await log.close();
  });

  it('group-commits 200 concurrent calls into far fewer fsyncs', async () => {
    const log = await openLog(dir, { fsyncIntervalMs: 10_000 });
    await Promise.all(Array.from({ length: 200 }, (_, i) => log.writeDurable(event(i))));
    expect(traceIdsInFile()).toHaveLength(200);
    expect(log.stats.fsyncs).toBeLessThanOrEqual(2);

    // Arrivals spread over many ticks still share fsyncs: each batch takes what queued during the last fsync.
    const before = log.stats.fsyncs;
    const calls: Array<Promise<void>> = [];
    for (let i = 0; i < 200; i++) {
      calls.push(log.writeDurable(event(1000 + i)));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await Promise.all(calls);
    const used = log.stats.fsyncs - before;
    console.log(`200 staggered durable writes: ${used} fsyncs`);
    expect(used).toBeLessThan(200);
    await log.close();
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 400 });
  });

  it('carries buffered events in the same batch as a durable one, in call order', async () => {
    const log = await openLog(dir, { fsyncIntervalMs: 10_000 });
    log.write(event(1));
    log.write(event(2));
    await log.writeDurable(event(3));
    expect(traceIdsInFile()).toEqual(['trace-1', 'trace-2', 'trace-3']);
    await log.close();
  });
});

describe('write (buffered)', () => {
  it('does not block and reaches the disk within fsyncIntervalMs', async () => {
    const log = await openLog(dir, { fsyncIntervalMs: 30 });
    log.write(event(1));
    expect(traceIdsInFile()).toEqual([]);
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(traceIdsInFile()).toEqual(['trace-1']);
    expect(log.stats.fsyncs).toBe(1);
    await log.close();
  });

  it('close() flushes what is buffered; later writes are reported, not thrown', async () => {
    const failures: AuditWriteError[] = [];
    const log = await openLog(dir, { fsyncIntervalMs: 10_000, onWriteFailure: (err) => failures.push(err) });
    for (let i = 0; i < 10; i++) log.write(event(i));
    await log.close();
    expect(traceIdsInFile()).toHaveLength(10);
    expect(() => log.write(event(11))).not.toThrow();
    expect(failures.map((err) => err.operation)).toEqual(['closed']);
    await expect(log.writeDurable(event(12))).rejects.toMatchObject({ operation: 'closed' });
  });

  it('reports an event that cannot be serialized instead of throwing', async () => {
    const failures: AuditWriteError[] = [];
    const log = await openLog(dir, { onWriteFailure: (err) => failures.push(err) });
    expect(() => log.write(event(1, { details: { big: 1n } }))).not.toThrow();
    expect(failures[0]?.operation).toBe('serialize');
    await expect(log.writeDurable(event(2, { details: { big: 1n } }))).rejects.toBeInstanceOf(AuditWriteError);
    await log.close();
  });

  it('scrubs secret-looking text anywhere in the event', async () => {
    const log = await openLog(dir);
    await log.writeDurable(event(1, { reason: 'bad key dvk_abc_SECRETSECRET', details: { header: 'Bearer SECRETSECRETSECRET' } }));
    await log.close();
    const text = readFileSync(path, 'utf8');
    expect(text).not.toContain('SECRET');
    expect(parseLines(path)[0]).toMatchObject({ reason: 'bad key dvk_abc_[REDACTED]', details: { header: 'Bearer [REDACTED]' } });
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true });
  });
});

describe('write failures (log path is a symlink to /dev/full)', () => {
  it('rejects durable writes, reports buffered ones, and renames nothing', async () => {
    symlinkSync('/dev/full', path);
    const failures: AuditWriteError[] = [];
    const clock = new Clock(new Date(2025, 0, 1, 12));
    const log = await openLog(dir, { now: clock.now, fsyncIntervalMs: 5, onWriteFailure: (err) => failures.push(err) });

    const durable = log.writeDurable(event(1));
    await expect(durable).rejects.toBeInstanceOf(AuditWriteError);
    await expect(durable).rejects.toMatchObject({ operation: 'write', events: 1 });

    expect(() => log.write(event(2))).not.toThrow();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(failures.length).toBeGreaterThanOrEqual(2);
    expect(failures.every((err) => err instanceof AuditWriteError)).toBe(true);

    // Crossing midnight must not rename the symlink (nor /dev/full).
    clock.set('2025-01-02T12:00:00');
    await expect(log.writeDurable(event(3))).rejects.toBeInstanceOf(AuditWriteError);
    await log.close();
    expect(lstatSync(path).isSymbolicLink()).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['audit-hmac.key', 'rpc-audit.log']);
    expect(log.stats).toMatchObject({ entries: 0, lastSeq: 0, lostEvents: 3 });
  });
});

describe('fsync failure on a regular file', () => {
  it('rejects with operation fsync, removes the batch again, and the chain continues intact', async () => {
    const failures: AuditWriteError[] = [];
    const log = await openLog(dir, { fsyncIntervalMs: 10_000, onWriteFailure: (err) => failures.push(err) });
    await log.writeDurable(event(1));
    // Reach into the writer's file handle to make the next fdatasync fail (EIO).
    const handle = (log as unknown as { fd: { datasync: () => Promise<void> } }).fd;
    const real = handle.datasync.bind(handle);
    handle.datasync = () => Promise.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    log.write(event(2));
    await expect(log.writeDurable(event(3))).rejects.toMatchObject({ name: 'AuditWriteError', operation: 'fsync', events: 2 });
    expect(failures.map((err) => err.operation)).toEqual(['fsync']);
    expect(traceIdsInFile()).toEqual(['trace-1']);
    handle.datasync = real;
    await log.writeDurable(event(4));
    await log.close();
    expect(parseLines(path).map((entry) => [entry.trace_id, entry.seq])).toEqual([
      ['trace-1', 1],
      ['trace-4', 2],
    ]);
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 2 });
    expect(log.stats).toMatchObject({ failedBatches: 1, lostEvents: 2 });
  });
});

describe('HMAC key file', () => {
  it('is created with mode 0600 and 32 random bytes when missing, and reused after', async () => {
    const keyFile = join(dir, 'keys', 'audit-hmac.key');
    const log = await AuditLog.open({ path, hmacKeyFile: keyFile });
    await log.close();
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    const hex = readFileSync(keyFile, 'utf8').trim();
    expect(hex).toMatch(/^[0-9a-f]{64}$/);
    const again = await AuditLog.open({ path, hmacKeyFile: keyFile });
    await again.close();
    expect(readFileSync(keyFile, 'utf8').trim()).toBe(hex);
    expect(readdirSync(join(dir, 'keys'))).toEqual(['audit-hmac.key']);
  });

  it('refuses a key file that group or other can read', async () => {
    const keyFile = join(dir, 'audit-hmac.key');
    writeFileSync(keyFile, `${'ab'.repeat(32)}\n`, { mode: 0o644 });
    chmodSync(keyFile, 0o644);
    await expect(AuditLog.open({ path, hmacKeyFile: keyFile })).rejects.toThrow(/mode 0644.*chmod 600/);
    await expect(AuditLog.open({ path, hmacKeyFile: keyFile })).rejects.toBeInstanceOf(AuditKeyError);
    expect(existsSync(path)).toBe(false);
  });

  it('refuses a key file that does not hold a hex key', async () => {
    const keyFile = join(dir, 'audit-hmac.key');
    writeFileSync(keyFile, 'short\n', { mode: 0o600 });
    await expect(AuditLog.open({ path, hmacKeyFile: keyFile })).rejects.toThrow(/64 hex digits/);
  });
});
