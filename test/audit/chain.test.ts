// The HMAC chain: 1000 events written, then tampered copies verified.
import { copyFileSync, existsSync, rmSync, truncateSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { auditFilesInOrder, verifyAuditFiles, type VerifyResult } from '../../src/audit/verify.js';
import { Clock, event, keyOf, openLog, parseLines, readLines, tempDir, writeLines } from './helpers.js';

let dir: string;
let cleanup: () => void;
let file: string;
let key: Buffer;

/** A copy of the log to tamper with. */
function copy(name: string): string {
  const target = join(dir, name);
  copyFileSync(file, target);
  return target;
}

function failure(result: VerifyResult): Extract<VerifyResult, { ok: false }> {
  if (result.ok) throw new Error(`expected a verification failure, got ${JSON.stringify(result)}`);
  return result;
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir());
  const log = await openLog(dir, { fsyncIntervalMs: 5 });
  const durable: Array<Promise<void>> = [];
  for (let i = 1; i <= 1000; i++) {
    if (i % 3 === 0) durable.push(log.writeDurable(event(i, { type: 'SECURITY' })));
    else log.write(event(i));
    if (i % 100 === 0) await new Promise((resolve) => setTimeout(resolve, 2));
  }
  await Promise.all(durable);
  await log.close();
  file = join(dir, 'rpc-audit.log');
  key = keyOf(dir);
});

afterAll(() => cleanup());

describe('audit chain', () => {
  it('writes 1000 entries with seq 1..1000 in file order and verifies', () => {
    const entries = parseLines(file);
    expect(entries).toHaveLength(1000);
    expect(entries.map((entry) => entry.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1));
    // File order is the order of the calls.
    expect(entries.map((entry) => entry.trace_id)).toEqual(Array.from({ length: 1000 }, (_, i) => `trace-${i + 1}`));
    expect(Object.keys(entries[0]!)).toEqual(['time', 'trace_id', 'type', 'principal', 'source', 'method', 'decision', 'code', 'duration_ms', 'request', 'object', 'seq', 'hmac']);
    expect(verifyAuditFiles([file], key)).toEqual({ ok: true, entries: 1000, files: 1, firstSeq: 1, lastSeq: 1000, startsMidChain: false });
  });

  it('detects a modified field at line 500', () => {
    const target = copy('modified.log');
    const lines = readLines(target);
    lines[499] = lines[499]!.replace('"decision":"allow"', '"decision":"deny"');
    writeLines(target, lines);
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'modified', line: 500, seq: 500 });
  });

  it('detects a changed seq (and a changed hmac) as modified', () => {
    const target = copy('modified-seq.log');
    const lines = readLines(target);
    lines[499] = lines[499]!.replace('"seq":500,', '"seq":900,');
    writeLines(target, lines);
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'modified', line: 500, seq: 500 });

    const target2 = copy('modified-hmac.log');
    const lines2 = readLines(target2);
    lines2[41] = lines2[41]!.replace(/"hmac":"(.)/, (_, c: string) => `"hmac":"${c === '0' ? '1' : '0'}`);
    writeLines(target2, lines2);
    expect(failure(verifyAuditFiles([target2], key))).toMatchObject({ problem: 'modified', line: 42 });
  });

  it('detects a deleted line 300 at that position', () => {
    const target = copy('deleted.log');
    const lines = readLines(target);
    lines.splice(299, 1);
    writeLines(target, lines);
    const result = failure(verifyAuditFiles([target], key));
    expect(result).toMatchObject({ problem: 'deleted', line: 300, seq: 301, entries: 299 });
    expect(result.message).toContain('seq 300');
  });

  it('detects swapped lines 10 and 11 as reordered at line 10', () => {
    const target = copy('swapped.log');
    const lines = readLines(target);
    [lines[9], lines[10]] = [lines[10]!, lines[9]!];
    writeLines(target, lines);
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'reordered', line: 10, seq: 11 });
  });

  it('detects a duplicated line as reordered', () => {
    const target = copy('dup.log');
    const lines = readLines(target);
    lines.splice(20, 0, lines[19]!);
    writeLines(target, lines);
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'reordered', line: 21, seq: 20 });
  });

  it('reports a truncated last line as unparseable', () => {
    const target = copy('truncated.log');
    truncateSync(target, statSync(target).size - 40);
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'unparseable', line: 1000 });
  });

  it('rejects entries signed with another key', () => {
    expect(failure(verifyAuditFiles([file], Buffer.alloc(32, 7)))).toMatchObject({ problem: 'modified', line: 1 });
  });

  it('accepts a file whose predecessor is gone, and says so', () => {
    const target = copy('tail.log');
    writeLines(target, readLines(target).slice(600));
    expect(verifyAuditFiles([target], key)).toEqual({ ok: true, entries: 400, files: 1, firstSeq: 601, lastSeq: 1000, startsMidChain: true });
  });
});

describe('audit chain across rotated files', () => {
  let rdir: string;
  let rcleanup: () => void;
  let files: string[];

  beforeAll(async () => {
    ({ dir: rdir, cleanup: rcleanup } = tempDir());
    const clock = new Clock(new Date(2025, 2, 1, 12));
    const log = await openLog(rdir, { now: clock.now });
    for (let day = 1; day <= 4; day++) {
      clock.date = new Date(2025, 2, day, 12);
      for (let i = 0; i < 50; i++) await log.writeDurable(event(day * 100 + i));
    }
    await log.close();
    files = auditFilesInOrder(join(rdir, 'rpc-audit.log'));
  });

  afterAll(() => rcleanup());

  it('lists 3 rotated files and the current one, and the chain verifies across them', () => {
    expect(files.map((f) => f.slice(rdir.length + 1))).toEqual([
      'rpc-audit-2025-03-01.log',
      'rpc-audit-2025-03-02.log',
      'rpc-audit-2025-03-03.log',
      'rpc-audit.log',
    ]);
    expect(verifyAuditFiles(files, keyOf(rdir))).toMatchObject({ ok: true, entries: 200, files: 4, firstSeq: 1, lastSeq: 200 });
  });

  it('detects a whole middle file deleted', () => {
    const remaining = files.filter((f) => !f.endsWith('2025-03-02.log'));
    expect(failure(verifyAuditFiles(remaining, keyOf(rdir)))).toMatchObject({ problem: 'deleted', file: remaining[1], line: 1, seq: 101 });
  });

  it('detects files given out of order', () => {
    const swapped = [files[1]!, files[0]!, files[2]!, files[3]!];
    // The day-2 file is taken as a mid-chain start; the day-1 file then goes backwards.
    expect(failure(verifyAuditFiles(swapped, keyOf(rdir)))).toMatchObject({ problem: 'reordered', file: files[0], line: 1, seq: 1 });
    // Day 3 after day 1: the day-2 entries show up later, so this is a reorder, not a deletion.
    expect(failure(verifyAuditFiles([files[0]!, files[2]!, files[1]!], keyOf(rdir)))).toMatchObject({ problem: 'reordered', file: files[2], line: 1 });
  });

  it('stays intact when the oldest file is removed (retention)', () => {
    rmSync(files[0]!);
    expect(existsSync(files[0]!)).toBe(false);
    expect(verifyAuditFiles(auditFilesInOrder(join(rdir, 'rpc-audit.log')), keyOf(rdir))).toMatchObject({ ok: true, entries: 150, firstSeq: 51, startsMidChain: true });
  });
});
