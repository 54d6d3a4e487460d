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

/** Indexes (0-based) of the lines that start a batch, and of those that seal one. */
function batchLines(lines: string[]): { starts: number[]; seals: number[] } {
  const starts: number[] = [];
  const seals: number[] = [];
  lines.forEach((line, index) => {
    if (line.includes(',"prev":"')) starts.push(index);
    if (SEAL.test(line)) seals.push(index);
  });
  return { starts, seals };
}

const SEAL = /,"digests":"(?:[0-9a-f]{32})+","hmac":"[0-9a-f]{64}"\}$/;

/** The line with the first hex digit of its `member` ("prev" or "hmac") changed. */
function flipFirstHex(line: string, member: 'prev' | 'hmac'): string {
  return line.replace(new RegExp(`"${member}":"(.)`), (_, c: string) => `"${member}":"${c === '0' ? '1' : '0'}`);
}

/** Verifies a copy of the log with `edit` applied to its lines (given where its batches start and end); expects a failure. */
function failureOfEdited(name: string, edit: (lines: string[], batches: { starts: number[]; seals: number[] }) => void): Extract<VerifyResult, { ok: false }> {
  const target = copy(name);
  const lines = readLines(target);
  edit(lines, batchLines(lines));
  writeLines(target, lines);
  return failure(verifyAuditFiles([target], key));
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
    // A durable write resolves once its batch is sealed and synced: every 100 entries a batch
    // ends here, whatever the machine's speed (a timer-paced loop made batches by timing).
    if (i % 100 === 0) await Promise.all(durable);
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
    const fields = ['time', 'trace_id', 'type', 'principal', 'source', 'method', 'decision', 'code', 'duration_ms', 'request', 'object', 'seq'];
    // A batch: its first entry links to the previous batch, its last one carries the digests and the MAC.
    const { starts, seals } = batchLines(readLines(file));
    expect(starts[0]).toBe(0);
    expect(seals.at(-1)).toBe(999);
    expect(starts.length).toBe(seals.length);
    expect(starts.length).toBeGreaterThan(3);
    expect(Object.keys(entries[0]!)).toEqual(seals[0] === 0 ? [...fields, 'prev', 'digests', 'hmac'] : [...fields, 'prev']);
    expect(Object.keys(entries[999]!)).toEqual(starts.at(-1) === 999 ? [...fields, 'prev', 'digests', 'hmac'] : [...fields, 'digests', 'hmac']);
    expect(entries[0]!.prev).toBe('');
    expect(verifyAuditFiles([file], key)).toEqual({ ok: true, entries: 1000, files: 1, firstSeq: 1, lastSeq: 1000, startsMidChain: false });
  });

  it('detects a modified field at line 500', () => {
    const target = copy('modified.log');
    const lines = readLines(target);
    lines[499] = lines[499]!.replace('"decision":"allow"', '"decision":"deny"');
    writeLines(target, lines);
    // Named exactly, through its digest in the batch seal; the batches before it verified.
    const first = batchLines(lines).starts.filter((start) => start <= 499).at(-1)!;
    const result = failure(verifyAuditFiles([target], key));
    expect(result).toMatchObject({ problem: 'modified', line: 500, seq: 500, entries: first });
    expect(result.message).toContain('does not match its digest');
  });

  it("detects a change in a batch's sealing entry, and a changed link between batches", () => {
    const { seals, starts } = batchLines(readLines(file));
    const seal = seals[1]!;
    const start = starts[2]!;
    expect(failureOfEdited('sealing-entry.log', (edited) => (edited[seal] = edited[seal]!.replace('"object":"vm/web-', '"object":"vm/web-x')))).toMatchObject({
      problem: 'modified',
      line: seal + 1,
    });
    expect(failureOfEdited('relinked.log', (edited) => (edited[start] = flipFirstHex(edited[start]!, 'prev')))).toMatchObject({ problem: 'modified', line: start + 1 });
  });

  it('detects a changed seq (and a changed hmac) as modified', () => {
    const changedSeq = failureOfEdited('modified-seq.log', (lines) => {
      lines[499] = lines[499]!.replace(/"seq":500([,}])/, '"seq":900$1');
      expect(lines[499]).toContain('"seq":900');
    });
    expect(changedSeq).toMatchObject({ problem: 'modified', line: 500, seq: 500 });

    const seal = batchLines(readLines(file)).seals[1]!;
    expect(failureOfEdited('modified-hmac.log', (lines) => (lines[seal] = flipFirstHex(lines[seal]!, 'hmac')))).toMatchObject({ problem: 'modified', line: seal + 1 });
    // A digest changed to hide an edit: the seal no longer matches its MAC.
    expect(failureOfEdited('modified-digests.log', (lines) => (lines[seal] = lines[seal]!.replace(/"digests":"(.)/, (_, c: string) => `"digests":"${c === '0' ? '1' : '0'}`)))).toMatchObject({
      problem: 'modified',
      line: seal + 1,
    });
    // The seal removed altogether: the batch runs into the next one.
    expect(failureOfEdited('unsealed.log', (lines) => (lines[seal] = lines[seal]!.replace(SEAL, '}')))).toMatchObject({ problem: 'modified', line: seal + 2 });
  });

  it('detects a deleted line 300 at that position', () => {
    const target = copy('deleted.log');
    const lines = readLines(target);
    lines.splice(299, 1);
    writeLines(target, lines);
    const result = failure(verifyAuditFiles([target], key));
    expect(result).toMatchObject({ problem: 'deleted', line: 300, seq: 301 });
    expect(result.entries).toBeLessThan(300);
    expect(result.message).toContain('seq 300');
  });

  it('detects a whole batch deleted, and the last batch cut short', () => {
    const target = copy('batch-deleted.log');
    const lines = readLines(target);
    const { starts } = batchLines(lines);
    const [from, to] = [starts[2]!, starts[3]!];
    lines.splice(from, to - from);
    writeLines(target, lines);
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'deleted', line: from + 1, seq: to + 1 });

    // Lines removed from the end, down to the middle of the last batch: its seal is gone.
    const cut = copy('cut.log');
    const lines2 = readLines(cut);
    const lastStart = batchLines(lines2).starts.at(-1)!;
    expect(lastStart).toBeLessThan(998);
    writeLines(cut, lines2.slice(0, 999));
    expect(failure(verifyAuditFiles([cut], key))).toMatchObject({ problem: 'deleted', line: lastStart + 1, seq: lastStart + 1 });
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
    const firstSeal = batchLines(readLines(file)).seals[0]!;
    expect(failure(verifyAuditFiles([file], Buffer.alloc(32, 7)))).toMatchObject({ problem: 'modified', line: firstSeal + 1 });
  });

  it('refuses a file whose start was cut at a batch boundary (no link record); --legacy accepts it, checking its first batch all the same', () => {
    const target = copy('tail.log');
    const lines = readLines(target);
    const start = batchLines(lines).starts.find((index) => index >= 600)!;
    writeLines(target, lines.slice(start));
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'unlinked', line: 1, seq: start + 1 });
    expect(verifyAuditFiles([target], key, { legacy: true })).toEqual({ ok: true, entries: 1000 - start, files: 1, firstSeq: start + 1, lastSeq: 1000, startsMidChain: true });
    const changed = lines.slice(start);
    changed[0] = changed[0]!.replace('"code":"OK"', '"code":"NOT_FOUND"');
    writeLines(target, changed);
    expect(failure(verifyAuditFiles([target], key, { legacy: true }))).toMatchObject({ problem: 'modified', line: 1 });
  });

  it('refuses an empty log', () => {
    const target = copy('empty.log');
    writeLines(target, []);
    truncateSync(target, 0);
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'empty', file: target });
  });

  it('reports a file that starts in the middle of a batch (its head cut off)', () => {
    const target = copy('headless.log');
    const lines = readLines(target);
    const start = batchLines(lines).starts.find((index) => index >= 600)!;
    writeLines(target, lines.slice(start + 1));
    expect(failure(verifyAuditFiles([target], key))).toMatchObject({ problem: 'deleted', line: 1, seq: start + 2 });
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
    // 200 events, and a link record at the start of each file after the first.
    expect(verifyAuditFiles(files, keyOf(rdir))).toMatchObject({ ok: true, entries: 203, files: 4, firstSeq: 1, lastSeq: 203 });
    expect(parseLines(files[1]!)[0]).toMatchObject({ seq: 51, type: 'SECURITY', details: { audit_chain: { continues_from_seq: 50, cause: 'rotation', previous_file: 'rpc-audit-2025-03-01.log' } } });
  });

  it('detects a whole middle file deleted', () => {
    const remaining = files.filter((f) => !f.endsWith('2025-03-02.log'));
    expect(failure(verifyAuditFiles(remaining, keyOf(rdir)))).toMatchObject({ problem: 'deleted', file: remaining[1], line: 1, seq: 102 });
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
    // The day-2 file starts with its link record: a mid-chain start verify accepts.
    expect(verifyAuditFiles(auditFilesInOrder(join(rdir, 'rpc-audit.log')), keyOf(rdir))).toMatchObject({
      ok: true,
      entries: 153,
      firstSeq: 51,
      startsMidChain: true,
      startLink: { cause: 'rotation', continues_from_seq: 50 },
    });
  });
});
