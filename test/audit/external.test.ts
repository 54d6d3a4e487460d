// The audit log against other programs and hostile load: logrotate renaming, removing or
// truncating the file; floods of unauthenticated records; a filling filesystem.
import { renameSync, rmSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { AuditLog } from '../../src/audit/log.js';
import { verifyAuditFiles } from '../../src/audit/verify.js';
import { event, keyOf, openLog, parseLines, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => void;
let path: string;
let log: AuditLog | undefined;

beforeEach(() => {
  ({ dir, cleanup } = tempDir());
  path = join(dir, 'rpc-audit.log');
});

afterEach(async () => {
  await log?.close();
  log = undefined;
  cleanup();
});

const WAIT = { timeout: 10_000, interval: 20 };

describe('a file renamed, removed or truncated by another program', () => {
  it('renamed (logrotate without copytruncate): a durable write reopens the path first; the chain links across both files', async () => {
    const warnings: string[] = [];
    log = await openLog(dir, { onWarning: (message) => warnings.push(message) });
    for (let i = 1; i <= 3; i++) await log.writeDurable(event(i));
    renameSync(path, `${path}.1`);
    await log.writeDurable(event(4));
    expect(log.stats.reopens).toBe(1);
    const renamed = parseLines(`${path}.1`);
    const current = parseLines(path);
    expect(renamed.map((entry) => entry.seq)).toEqual([1, 2, 3]);
    expect(current.map((entry) => entry.seq)).toEqual([4, 5]);
    expect(current[0]).toMatchObject({
      type: 'SECURITY',
      reason: 'audit log file was renamed by another program and reopened; the chain continues from seq 3 in rpc-audit.log.1',
      details: { audit_chain: { continues_from_seq: 3, cause: 'renamed', previous_file: 'rpc-audit.log.1' } },
    });
    expect(current[1]).toMatchObject({ trace_id: 'trace-4' });
    expect(warnings.some((message) => message.includes('was renamed by another program (now rpc-audit.log.1)'))).toBe(true);
    expect(verifyAuditFiles([`${path}.1`, path], keyOf(dir))).toMatchObject({ ok: true, entries: 5, firstSeq: 1, lastSeq: 5 });
    // The current file alone starts at its link record.
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, startsMidChain: true, startLink: { cause: 'renamed' } });
  });

  it('renamed while idle: noticed within the check interval, with the SECURITY record written at once', async () => {
    log = await openLog(dir, { checkIntervalMs: 50 });
    log.write(event(1));
    await log.flush();
    renameSync(path, `${path}.1`);
    await vi.waitFor(() => expect(parseLines(path)[0]).toMatchObject({ seq: 2, type: 'SECURITY', details: { audit_chain: { cause: 'renamed' } } }), WAIT);
    // Buffered (read) records follow into the new file.
    log.write(event(2));
    await log.flush();
    expect(parseLines(path).map((entry) => entry.seq)).toEqual([2, 3]);
    expect(verifyAuditFiles([`${path}.1`, path], keyOf(dir))).toMatchObject({ ok: true, entries: 3 });
  });

  it('removed: reopened, the SECURITY record says so, and the new file verifies on its own from its link', async () => {
    log = await openLog(dir);
    for (let i = 1; i <= 3; i++) await log.writeDurable(event(i));
    rmSync(path);
    await log.writeDurable(event(4));
    const current = parseLines(path);
    expect(current[0]).toMatchObject({ seq: 4, type: 'SECURITY', details: { audit_chain: { continues_from_seq: 3, cause: 'removed' } } });
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 2, firstSeq: 4, startLink: { cause: 'removed' } });
  });

  it('truncated in place (copytruncate): the chain restarts in the same file from a link record', async () => {
    log = await openLog(dir);
    for (let i = 1; i <= 3; i++) await log.writeDurable(event(i));
    truncateSync(path, 0);
    await log.writeDurable(event(4));
    expect(parseLines(path).map((entry) => entry.seq)).toEqual([4, 5]);
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 2, startLink: { cause: 'truncated' } });
  });

  it('a new file after a restart on an empty current file starts with a link too', async () => {
    log = await openLog(dir);
    await log.writeDurable(event(1));
    await log.close();
    renameSync(path, join(dir, 'rpc-audit-2025-01-01.log'));
    log = await openLog(dir);
    await log.writeDurable(event(2));
    expect(parseLines(path)[0]).toMatchObject({ seq: 2, details: { audit_chain: { continues_from_seq: 1, cause: 'start' } } });
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, startLink: { cause: 'start' } });
  });
});

describe('records anyone can cause without credentials', () => {
  const unauthenticated = (i: number, source = '198.51.100.7:40000') =>
    event(i, { type: 'AUTH_FAILED', principal: undefined, source, decision: 'deny', code: undefined, reason: `bad key ${i}` });

  it('are kept up to the per-source limit; the rest are counted in one summary record per source per interval', async () => {
    const dropped: number[] = [];
    log = await openLog(dir, { floodLimits: { recordsPerSource: 5, intervalMs: 200, maxSources: 100 }, onDropped: (n) => dropped.push(n) });
    for (let i = 0; i < 100; i++) log.write(unauthenticated(i, `198.51.100.7:${40000 + i}`));
    for (let i = 0; i < 3; i++) log.write(unauthenticated(i, '203.0.113.9:1'));
    // A caller with credentials is never limited.
    for (let i = 0; i < 50; i++) log.write(event(i));
    await vi.waitFor(() => expect(parseLines(path).some((entry) => entry.type === 'SUSPICIOUS')).toBe(true), WAIT);
    await log.flush();
    const entries = parseLines(path);
    expect(entries.filter((entry) => entry.type === 'AUTH_FAILED' && String(entry.source).startsWith('198.51.100.7'))).toHaveLength(5);
    expect(entries.filter((entry) => entry.type === 'AUTH_FAILED' && entry.source === '203.0.113.9:1')).toHaveLength(3);
    expect(entries.filter((entry) => entry.type === 'CALL')).toHaveLength(50);
    const summaries = entries.filter((entry) => entry.type === 'SUSPICIOUS');
    expect(summaries).toEqual([
      expect.objectContaining({
        source: '198.51.100.7',
        details: { dropped_records: 95, interval_seconds: 0.2, limit_per_source: 5 },
      }),
    ]);
    expect(dropped.reduce((a, b) => a + b, 0)).toBe(95);
    expect(log.stats.droppedUnauthenticated).toBe(95);
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true });
  });

  it('beyond maxSources, new sources share one budget', async () => {
    log = await openLog(dir, { floodLimits: { recordsPerSource: 2, intervalMs: 60_000, maxSources: 3 } });
    for (let i = 0; i < 1000; i++) log.write(unauthenticated(i, `10.1.${i >> 8}.${i & 255}:1`));
    await log.close();
    const entries = parseLines(path);
    // One record each from the first 3 sources; all the others share one budget of 2.
    expect(entries.filter((entry) => entry.type === 'AUTH_FAILED')).toHaveLength(5);
    expect(entries.filter((entry) => entry.type === 'SUSPICIOUS')).toEqual([expect.objectContaining({ source: 'other', details: expect.objectContaining({ dropped_records: 995 }) as unknown })]);
    log = undefined;
  });
});

describe('a filling audit filesystem', () => {
  it('below the reserve: a SECURITY event and the low flag; reads still audited, unauthenticated records only counted', async () => {
    const observed: Array<{ free: number; low: boolean }> = [];
    log = await openLog(dir, { reserveBytes: Number.MAX_SAFE_INTEGER, checkIntervalMs: 50, onFreeSpace: (free, low) => observed.push({ free, low }) });
    expect(log.stats.lowSpace).toBe(true);
    expect(observed[0]).toMatchObject({ low: true });
    expect(observed[0]!.free).toBeGreaterThan(0);
    log.write(event(1, { method: '/debvisor.v1.VmService/ListVms' }));
    log.write(event(2, { type: 'AUTH_FAILED', principal: undefined }));
    await log.writeDurable(event(3));
    const entries = parseLines(path);
    expect(entries[0]).toMatchObject({ type: 'SECURITY', details: { reserve_bytes: Number.MAX_SAFE_INTEGER } });
    expect(String(entries[0]!.reason)).toMatch(/^audit filesystem low on space: \d+ bytes free, below the reserve of /);
    expect(entries.map((entry) => entry.trace_id).slice(1)).toEqual(['trace-1', 'trace-3']);
    expect(log.stats.droppedUnauthenticated).toBe(1);
  });
});
