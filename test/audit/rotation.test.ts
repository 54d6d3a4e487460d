// Daily rotation and retention, driven by an injected clock.
import { createHmac } from 'node:crypto';
import { appendFileSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AuditOpenError } from '../../src/audit/log.js';
import { auditFilesInOrder, verifyAuditFiles } from '../../src/audit/verify.js';
import { Clock, event, keyOf, openLog, parseLines, readLines, tempDir, writeLines } from './helpers.js';

let dir: string;
let cleanup: () => void;
let path: string;

beforeEach(() => {
  ({ dir, cleanup } = tempDir());
  path = join(dir, 'rpc-audit.log');
});
afterEach(() => cleanup());

function names(): string[] {
  return readdirSync(dir)
    .filter((name) => name.startsWith('rpc-audit'))
    .sort();
}

/** Three days of mixed buffered and durable events, crossing midnight between batches. */
async function threeDays(clock: Clock, retainFiles?: number): Promise<void> {
  const log = await openLog(dir, { now: clock.now, fsyncIntervalMs: 1, ...(retainFiles === undefined ? {} : { retainFiles }) });
  let i = 0;
  for (const day of [1, 2, 3]) {
    clock.date = new Date(2025, 5, day, 23, 59, 58);
    for (let k = 0; k < 20; k++) log.write(event(++i));
    await log.writeDurable(event(++i));
    clock.date = new Date(2025, 5, day, 23, 59, 59, 999);
    for (let k = 0; k < 20; k++) log.write(event(++i));
    await log.flush();
  }
  await log.close();
}

describe('daily rotation', () => {
  it('rotates at local midnight: 3 days give 2 rotated files + current, chain intact, no gap or duplicate', async () => {
    const clock = new Clock(new Date(2025, 5, 1, 10));
    await threeDays(clock);
    expect(names()).toEqual(['rpc-audit-2025-06-01.log', 'rpc-audit-2025-06-02.log', 'rpc-audit.log']);
    const files = auditFilesInOrder(path);
    expect(files).toEqual([join(dir, 'rpc-audit-2025-06-01.log'), join(dir, 'rpc-audit-2025-06-02.log'), path]);
    const perFile = files.map((file) => parseLines(file));
    // Each file after the first starts with a link record (a SECURITY event naming the seq it continues from).
    expect(perFile.map((entries) => entries.length)).toEqual([41, 42, 42]);
    expect(perFile.slice(1).map((entries) => entries[0]?.details)).toEqual([
      { audit_chain: { continues_from_seq: 41, cause: 'rotation', previous_file: 'rpc-audit-2025-06-01.log' } },
      { audit_chain: { continues_from_seq: 83, cause: 'rotation', previous_file: 'rpc-audit-2025-06-02.log' } },
    ]);
    const seqs = perFile.flat().map((entry) => entry.seq);
    expect(seqs).toEqual(Array.from({ length: 125 }, (_, k) => k + 1));
    // Each file holds exactly its day's events.
    expect(perFile.map((entries) => new Set(entries.map((entry) => new Date(entry.time as string).getDate())))).toEqual([new Set([1]), new Set([2]), new Set([3])]);
    expect(verifyAuditFiles(files, keyOf(dir))).toEqual({ ok: true, entries: 125, files: 3, firstSeq: 1, lastSeq: 125, startsMidChain: false });
  });

  it('with retainFiles 1 deletes the oldest rotated file; verify reports startsMidChain', async () => {
    await threeDays(new Clock(new Date(2025, 5, 1, 10)), 1);
    expect(names()).toEqual(['rpc-audit-2025-06-02.log', 'rpc-audit.log']);
    expect(verifyAuditFiles(auditFilesInOrder(path), keyOf(dir))).toEqual({
      ok: true,
      entries: 84,
      files: 2,
      firstSeq: 42,
      lastSeq: 125,
      startsMidChain: true,
      startLink: { continues_from_seq: 41, cause: 'rotation', previous_file: 'rpc-audit-2025-06-01.log' },
    });
  });

  it('does not rotate an empty file, nor when the clock goes back', async () => {
    const clock = new Clock(new Date(2025, 5, 1, 10));
    const log = await openLog(dir, { now: clock.now });
    clock.set('2025-06-03T12:00:00');
    await log.writeDurable(event(1));
    expect(names()).toEqual(['rpc-audit.log']);
    clock.set('2025-06-02T12:00:00');
    await log.writeDurable(event(2));
    expect(names()).toEqual(['rpc-audit.log']);
    clock.set('2025-06-04T00:00:01');
    await log.writeDurable(event(3));
    expect(names()).toEqual(['rpc-audit-2025-06-03.log', 'rpc-audit.log']);
    await log.close();
    expect(verifyAuditFiles(auditFilesInOrder(path), keyOf(dir))).toMatchObject({ ok: true, entries: 4 });
  });

  it('continues the chain after a restart, from the current file or from the newest rotated file', async () => {
    const clock = new Clock(new Date(2025, 5, 1, 10));
    let log = await openLog(dir, { now: clock.now });
    await log.writeDurable(event(1));
    await log.writeDurable(event(2));
    await log.close();

    log = await openLog(dir, { now: clock.now });
    await log.writeDurable(event(3));
    clock.set('2025-06-02T10:00:00');
    await log.writeDurable(event(4));
    await log.close();
    expect(names()).toEqual(['rpc-audit-2025-06-01.log', 'rpc-audit.log']);

    // The current file lost (e.g. removed by hand): the chain resumes from the rotated one.
    const current = readLines(path);
    writeFileSync(path, '');
    log = await openLog(dir, { now: clock.now });
    expect(log.stats.lastSeq).toBe(3);
    await log.close();
    // Put it back and continue normally.
    writeFileSync(path, `${current.join('\n')}\n`);
    log = await openLog(dir, { now: clock.now });
    // Event 4 follows the rotation's link record (seq 4).
    expect(log.stats.lastSeq).toBe(5);
    await log.writeDurable(event(5));
    await log.close();
    expect(verifyAuditFiles(auditFilesInOrder(path), keyOf(dir))).toMatchObject({ ok: true, entries: 6, lastSeq: 6 });
  });

  it('uses a numbered name if the day file exists already', async () => {
    const clock = new Clock(new Date(2025, 5, 1, 10));
    writeFileSync(join(dir, 'rpc-audit-2025-06-01.log'), '');
    const log = await openLog(dir, { now: clock.now });
    await log.writeDurable(event(1));
    clock.set('2025-06-02T10:00:00');
    await log.writeDurable(event(2));
    await log.close();
    expect(names()).toEqual(['rpc-audit-2025-06-01.1.log', 'rpc-audit-2025-06-01.log', 'rpc-audit.log']);
    expect(auditFilesInOrder(path).map((f) => f.slice(dir.length + 1))).toEqual(['rpc-audit-2025-06-01.log', 'rpc-audit-2025-06-01.1.log', 'rpc-audit.log']);
  });
});

describe('recovery on open', () => {
  it('removes a torn last line (interrupted write) and continues the chain', async () => {
    let log = await openLog(dir);
    for (let i = 1; i <= 3; i++) await log.writeDurable(event(i));
    await log.close();
    appendFileSync(path, '{"time":"2025-06-01T00:00:00.000Z","trace_id":"torn","ty');
    const warnings: string[] = [];
    log = await openLog(dir, { onWarning: (message) => warnings.push(message) });
    expect(warnings.join()).toContain('incomplete last line');
    await log.writeDurable(event(4));
    await log.close();
    expect(parseLines(path).map((entry) => entry.seq)).toEqual([1, 2, 3, 4]);
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 4 });
  });

  it('removes the entries of a batch whose write was interrupted (no seal) and continues the chain', async () => {
    let log = await openLog(dir);
    await log.writeDurable(event(1));
    for (let i = 2; i <= 5; i++) log.write(event(i));
    await log.close();
    const lines = readLines(path);
    expect(lines).toHaveLength(5);
    // The crash hit after the batch's first lines were written, before its seal.
    writeFileSync(path, `${lines.slice(0, 3).join('\n')}\n${lines[3]!.slice(0, 20)}`);
    const warnings: string[] = [];
    log = await openLog(dir, { onWarning: (message) => warnings.push(message) });
    expect(warnings.join()).toContain('2 entries of a batch whose write was interrupted');
    expect(log.stats.lastSeq).toBe(1);
    await log.writeDurable(event(6));
    await log.close();
    expect(parseLines(path).map((entry) => [entry.seq, entry.trace_id])).toEqual([
      [1, 'trace-1'],
      [2, 'trace-6'],
    ]);
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 2 });
  });

  it('continues a log of the per-entry MAC format of earlier releases, and verifies both parts', async () => {
    // Three entries as earlier releases wrote them: each with its own MAC over the previous one.
    const key = Buffer.alloc(32, 9);
    writeFileSync(join(dir, 'audit-hmac.key'), `${key.toString('hex')}\n`, { mode: 0o600 });
    let prev = '';
    const legacy: string[] = [];
    for (let seq = 1; seq <= 3; seq++) {
      const canonical = `{"time":"2025-06-01T10:00:00.000Z","trace_id":"old-${seq}","type":"CALL","seq":${seq}}`;
      prev = createHmac('sha256', key).update(`${prev}\n${canonical}`).digest('hex');
      legacy.push(`${canonical.slice(0, -1)},"hmac":"${prev}"}`);
    }
    writeFileSync(path, `${legacy.join('\n')}\n`);
    // Only with --legacy: the current code never writes that format.
    expect(verifyAuditFiles([path], key)).toMatchObject({ ok: false, problem: 'legacy', line: 1 });
    expect(verifyAuditFiles([path], key, { legacy: true })).toMatchObject({ ok: true, entries: 3, lastSeq: 3 });
    const log = await openLog(dir, { now: () => new Date(2025, 5, 1, 12) });
    expect(log.stats.lastSeq).toBe(3);
    await log.writeDurable(event(4));
    await log.close();
    expect(verifyAuditFiles([path], key, { legacy: true })).toEqual({ ok: true, entries: 4, files: 1, firstSeq: 1, lastSeq: 4, startsMidChain: false });
    // A changed old entry is still caught, and per-entry lines are not accepted after a batch.
    const lines = readLines(path);
    writeLines(path, [lines[0]!.replace('old-1', 'old-X'), ...lines.slice(1)]);
    expect(verifyAuditFiles([path], key, { legacy: true })).toMatchObject({ ok: false, problem: 'modified', line: 1 });
    writeLines(path, [...lines, lines[1]!.replace('"seq":2', '"seq":5')]);
    expect(verifyAuditFiles([path], key, { legacy: true })).toMatchObject({ ok: false, line: 5 });
  });

  it('keeps a complete last entry that only lacks its newline', async () => {
    let log = await openLog(dir);
    for (let i = 1; i <= 2; i++) await log.writeDurable(event(i));
    await log.close();
    const text = readLines(path);
    writeFileSync(path, text.join('\n'));
    log = await openLog(dir);
    await log.writeDurable(event(3));
    await log.close();
    expect(verifyAuditFiles([path], keyOf(dir))).toMatchObject({ ok: true, entries: 3 });
  });

  it('refuses to continue from a damaged last entry', async () => {
    const log = await openLog(dir);
    await log.writeDurable(event(1));
    await log.close();
    appendFileSync(path, 'garbage\n');
    await expect(openLog(dir)).rejects.toBeInstanceOf(AuditOpenError);
    expect(existsSync(path)).toBe(true);
  });
});
