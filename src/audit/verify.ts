// Offline verification of the audit chain across rotated files.
import { closeSync, openSync, readSync } from 'node:fs';
import { CHAIN_GENESIS, chainKey, entryMac, parseLine, type ChainKey, type ParsedLine } from './chain.js';

export { auditFilesInOrder } from './files.js';

export type VerifyProblem = 'modified' | 'deleted' | 'reordered' | 'unparseable';

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
       * files removed by retention): its link was accepted unchecked.
       */
      startsMidChain: boolean;
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

/**
 * Verifies the chain over `files`, oldest first (see auditFilesInOrder). Reports the first
 * problem only. Limits: entries removed from the end of the newest file, and the content
 * of the first entry when the chain starts mid-way, cannot be detected from the files alone.
 */
export function verifyAuditFiles(files: string[], key: Buffer): VerifyResult {
  const mac: ChainKey = chainKey(key);
  const stream = new LineStream(files);
  let prev: ParsedLine | undefined;
  let firstSeq = 0;
  let entries = 0;
  let startsMidChain = false;

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
    if (!prev) {
      firstSeq = entry.seq;
      if (entry.seq === 1) {
        if (entryMac(mac, CHAIN_GENESIS, entry.canonical) !== entry.hmac) return problem(item, 'modified', 'entry does not match its HMAC', entry.seq);
      } else {
        startsMidChain = true;
      }
      prev = entry;
      entries++;
      continue;
    }

    const expected = prev.seq + 1;
    if (entry.seq === expected && entryMac(mac, prev.hmac, entry.canonical) === entry.hmac) {
      prev = entry;
      entries++;
      continue;
    }

    // This line is entry `expected` with its content (possibly its seq) changed: the next
    // entry still chains to the hmac it carries.
    const after = stream.peek(0)?.parsed;
    if (after?.seq === expected + 1 && entryMac(mac, entry.hmac, after.canonical) === after.hmac) {
      return problem(item, 'modified', `entry seq ${expected} was changed (it no longer matches its HMAC)`, expected);
    }
    if (entry.seq === expected) return problem(item, 'modified', 'entry does not match its HMAC or does not follow the previous entry', entry.seq);
    if (entry.seq <= prev.seq) {
      return problem(item, 'reordered', `seq ${entry.seq} after seq ${prev.seq} (out of order or duplicated)`, entry.seq);
    }
    // A gap: the missing entries were either moved further down or removed.
    for (let k = 0; k < REORDER_WINDOW; k++) {
      const ahead = stream.peek(k);
      if (!ahead) break;
      const seq = ahead.parsed?.seq;
      if (seq !== undefined && seq >= expected && seq < entry.seq) {
        return problem(item, 'reordered', `seq ${entry.seq} where seq ${expected} was expected; seq ${seq} appears later at ${ahead.file}:${ahead.line}`, entry.seq);
      }
    }
    const missing = entry.seq - expected === 1 ? `entry seq ${expected} is` : `entries seq ${expected}–${entry.seq - 1} are`;
    return problem(item, 'deleted', `${missing} missing before this line`, entry.seq);
  }

  return { ok: true, entries, files: files.length, firstSeq, lastSeq: prev?.seq ?? 0, startsMidChain };
}
