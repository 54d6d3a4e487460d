// Offline verification of the audit chain across rotated files.
import { closeSync, openSync, readSync } from 'node:fs';
import { CHAIN_GENESIS, DIGEST_HEX, batchMac, chainKey, chainLinkOf, entryDigest, legacyEntryMac, parseLine, type ChainKey, type ChainLinkDetails, type ParsedLine } from './chain.js';

export { auditFilesInOrder } from './files.js';

/**
 * empty: no entry at all (a log the daemon writes is never empty for long: its first call is audited).
 * unlinked: the chain starts mid-way at an entry that is not a link record (the start was cut).
 * legacy: an entry in the one-MAC-per-entry format of earlier releases, without `legacy`.
 */
export type VerifyProblem = 'modified' | 'deleted' | 'reordered' | 'unparseable' | 'empty' | 'unlinked' | 'legacy';

export interface VerifyOptions {
  /**
   * Accept logs written by earlier releases: entries in the one-MAC-per-entry format, and
   * a chain that starts mid-way without a link record (they wrote none).
   */
  legacy?: boolean;
}

export type VerifyResult =
  | {
      ok: true;
      entries: number;
      files: number;
      /** seq of the first and last entry (0 when there are none). */
      firstSeq: number;
      lastSeq: number;
      /**
       * The first entry is not seq 1 and its predecessor is not among the files (older
       * files removed by retention): the first batch's link to it was accepted unchecked
       * (its content was checked: the link is inside the batch's MAC).
       */
      startsMidChain: boolean;
      /** When it starts mid-way: the link record it starts at (none only with `legacy`). */
      startLink?: ChainLinkDetails;
    }
  | {
      ok: false;
      file: string;
      /** 1-based line number within `file`. */
      line: number;
      seq?: number;
      problem: VerifyProblem;
      message: string;
      /** Entries verified before the problem. */
      entries: number;
    };

interface RawLine {
  file: string;
  line: number;
  text: string;
  /** False for a last line without its newline. */
  terminated: boolean;
}

const READ_CHUNK = 1 << 20;

/** Lines of a file, read in chunks (files may be larger than a JS string). */
function* readLines(file: string): Generator<RawLine> {
  const fd = openSync(file, 'r');
  try {
    const chunk = Buffer.alloc(READ_CHUNK);
    let carry = Buffer.alloc(0);
    let line = 0;
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) break;
      let data = carry.length > 0 ? Buffer.concat([carry, chunk.subarray(0, n)]) : chunk.subarray(0, n);
      let start = 0;
      for (let nl = data.indexOf(10, start); nl >= 0; nl = data.indexOf(10, start)) {
        yield { file, line: ++line, text: data.toString('utf8', start, nl), terminated: true };
        start = nl + 1;
      }
      data = data.subarray(start);
      carry = Buffer.from(data);
    }
    if (carry.length > 0) yield { file, line: ++line, text: carry.toString('utf8'), terminated: false };
  } finally {
    closeSync(fd);
  }
}

interface Item extends RawLine {
  parsed: ParsedLine | undefined;
}

/** Lines of all files in order, with lookahead. */
class LineStream {
  private readonly buffer: Item[] = [];
  private readonly source: Generator<RawLine>;

  constructor(files: string[]) {
    this.source = (function* () {
      for (const file of files) yield* readLines(file);
    })();
  }

  /** The k-th next item (0 = the next one). */
  peek(k: number): Item | undefined {
    while (this.buffer.length <= k) {
      const next = this.source.next();
      if (next.done) return undefined;
      this.buffer.push({ ...next.value, parsed: next.value.text === '' ? undefined : parseLine(next.value.text) });
    }
    return this.buffer[k];
  }

  next(): Item | undefined {
    const item = this.peek(0);
    if (item) this.buffer.shift();
    return item;
  }
}

/** How far ahead a missing entry is looked for, to tell "moved" from "deleted". */
const REORDER_WINDOW = 1000;

/** The batch being read: its entries since its first line, up to its seal. */
interface OpenBatch {
  readonly first: Item;
  readonly firstSeq: number;
  readonly items: Item[];
}

/**
 * Verifies the chain over `files`, oldest first (see auditFilesInOrder). Reports the first
 * problem only. A changed entry is named exactly: the batch's MAC authenticates a digest
 * per entry (chain.ts), and the changed entry is the one whose digest differs.
 * Limit: whole batches removed from the end of the newest file cannot be detected from
 * the files alone.
 */
export function verifyAuditFiles(files: string[], key: Buffer, options: VerifyOptions = {}): VerifyResult {
  const mac: ChainKey = chainKey(key);
  const stream = new LineStream(files);
  let lastSeq: number | undefined;
  /** hmac of the last verified batch; undefined before the first. */
  let prevHmac: string | undefined;
  let batch: OpenBatch | undefined;
  /** Entries of the per-entry format (legacyEntryMac) may only precede the first batch. */
  let seenBatch = false;
  let firstSeq = 0;
  let entries = 0;
  let startsMidChain = false;
  let startLink: ChainLinkDetails | undefined;

  const problem = (item: Item, kind: VerifyProblem, message: string, seq?: number): VerifyResult => ({
    ok: false,
    file: item.file,
    line: item.line,
    ...(seq === undefined ? {} : { seq }),
    problem: kind,
    message,
    entries,
  });

  for (let item = stream.next(); item; item = stream.next()) {
    const entry = item.parsed;
    if (!entry) {
      const what = item.text === '' ? 'empty line' : item.terminated ? 'not a valid audit entry' : 'incomplete last line (truncated)';
      return problem(item, 'unparseable', what);
    }

    if (lastSeq === undefined) {
      firstSeq = entry.seq;
    } else if (entry.seq !== lastSeq + 1) {
      const found = outOfSequence(stream, item, entry, lastSeq + 1);
      return problem(item, found.problem, found.message, found.seq);
    }
    lastSeq = entry.seq;

    if (entry.prev !== undefined) {
      if (batch) return problem(item, 'modified', `a new batch starts before the batch from seq ${batch.firstSeq} was sealed (its seal was changed)`, entry.seq);
      if (prevHmac === undefined) {
        if (entry.seq === 1 && entry.prev !== CHAIN_GENESIS) return problem(item, 'modified', 'the first entry does not start the chain', entry.seq);
        startsMidChain = entry.seq !== 1;
        startLink = startsMidChain ? chainLinkOf(entry.entry, entry.seq) : undefined;
        if (startsMidChain && !startLink && !options.legacy) {
          return problem(
            item,
            'unlinked',
            `the chain starts mid-way at seq ${entry.seq} without a link record: the entries before it were removed from this file (or it was written by an earlier release: --legacy)`,
            entry.seq,
          );
        }
      } else if (entry.prev !== prevHmac) {
        return problem(item, 'modified', 'this batch does not follow the previous batch (its link does not match)', entry.seq);
      }
      batch = { first: item, firstSeq: entry.seq, items: [] };
      seenBatch = true;
    } else if (!batch) {
      if (entry.hmac !== undefined && !seenBatch) {
        if (!options.legacy) {
          return problem(item, 'legacy', 'entry in the one-MAC-per-entry format of earlier releases, which this daemon never writes (accepted only with --legacy)', entry.seq);
        }
        // An entry of the one-MAC-per-entry format of earlier releases (a log they started,
        // continued by this one): its MAC covers the previous MAC and itself.
        if (prevHmac === undefined) startsMidChain = entry.seq !== 1;
        const link = prevHmac ?? CHAIN_GENESIS;
        if ((prevHmac !== undefined || entry.seq === 1) && legacyEntryMac(mac, link, entry.canonical) !== entry.hmac) {
          return problem(item, 'modified', 'entry does not match its HMAC', entry.seq);
        }
        entries++;
        prevHmac = entry.hmac;
        continue;
      }
      // Files start with a batch, and a batch's first line is the only one without a predecessor in it.
      return problem(item, 'deleted', `the start of this batch is missing (entries before seq ${entry.seq} were removed)`, entry.seq);
    }
    batch.items.push(item);

    if (entry.hmac !== undefined) {
      const { first, firstSeq: from, items } = batch;
      const digests = entry.digests;
      if (digests === undefined || batchMac(mac, digests) !== entry.hmac) {
        return problem(item, 'modified', `the seal of the batch seq ${from}–${entry.seq} was changed: its digests do not match its HMAC`, entry.seq);
      }
      for (const [i, member] of items.entries()) {
        const line = member.parsed;
        if (line && entryDigest(line.canonical) !== digests.slice(i * DIGEST_HEX, (i + 1) * DIGEST_HEX)) {
          return problem(member, 'modified', 'entry does not match its digest in the batch seal', line.seq);
        }
      }
      if (digests.length !== items.length * DIGEST_HEX) {
        return problem(first, 'modified', `the batch seq ${from}–${entry.seq} has ${items.length} entries but its seal lists ${digests.length / DIGEST_HEX}`, from);
      }
      entries += items.length;
      prevHmac = entry.hmac;
      batch = undefined;
    }
  }

  if (batch) {
    return problem(batch.first, 'deleted', `the batch from seq ${batch.firstSeq} ends without its seal (its last entries were removed, or it is still being written)`, batch.firstSeq);
  }
  if (entries === 0) {
    const last = files.at(-1) ?? '';
    return { ok: false, file: last, line: 0, problem: 'empty', message: `no audit entries in ${files.length === 1 ? last : `${files.length} files`}: the log was emptied, or the daemon writes elsewhere (a renamed file)`, entries };
  }
  return { ok: true, entries, files: files.length, firstSeq, lastSeq: lastSeq ?? 0, startsMidChain, ...(startLink ? { startLink } : {}) };
}

/** Names what a seq other than `expected` means: a changed seq, moved entries, or removed ones. */
function outOfSequence(stream: LineStream, item: Item, entry: ParsedLine, expected: number): { problem: VerifyProblem; message: string; seq: number } {
  // The next entry continues from `expected`: this line is entry `expected` with its seq changed.
  if (stream.peek(0)?.parsed?.seq === expected + 1) {
    return { problem: 'modified', message: `entry seq ${expected} was changed (its seq reads ${entry.seq})`, seq: expected };
  }
  if (entry.seq <= expected - 1) {
    return { problem: 'reordered', message: `seq ${entry.seq} after seq ${expected - 1} (out of order or duplicated)`, seq: entry.seq };
  }
  // A gap: the missing entries were either moved further down or removed.
  for (let k = 0; k < REORDER_WINDOW; k++) {
    const ahead = stream.peek(k);
    if (!ahead) break;
    const seq = ahead.parsed?.seq;
    if (seq !== undefined && seq >= expected && seq < entry.seq) {
      return { problem: 'reordered', message: `seq ${entry.seq} where seq ${expected} was expected; seq ${seq} appears later at ${ahead.file}:${ahead.line}`, seq: entry.seq };
    }
  }
  const missing = entry.seq - expected === 1 ? `entry seq ${expected} is` : `entries seq ${expected}–${entry.seq - 1} are`;
  return { problem: 'deleted', message: `${missing} missing before this line`, seq: entry.seq };
}
