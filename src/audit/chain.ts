// The tamper-evident line format shared by the writer and the verifier.
//
// The writer commits events in batches (group commit, log.ts), and each batch carries
// one MAC instead of one per entry: an HMAC per entry was the largest single cost of
// auditing a call. Every line is still one entry with its own seq:
//
//   canonical_i = JSON of entry i: the event (fixed key order), then "seq", and on the
//                 first entry of a batch also "prev": the previous batch's hmac
//                 (CHAIN_GENESIS before the first batch)
//   hmac        = hex HMAC-SHA256(key, canonical_1 + "\n" + … + "\n" + canonical_k)
//   lines       = canonical_1 … canonical_k, the last one with ,"hmac":"<hex>" appended
//                 before its closing brace (it seals the batch)
//
// So a batch verifies on its own (its link to the previous batch is inside the MAC),
// and the batches chain to each other through "prev", across rotated files (a file
// always starts with a batch). The verifier recomputes the MAC over the exact bytes of
// the lines (minus the hmac member), so any byte-level change, a removed, added or
// moved entry, or a batch cut short is detected.
import { createHmac, createSecretKey, type KeyObject } from 'node:crypto';

/** prev of the very first batch (seq 1): independent of any file name. */
export const CHAIN_GENESIS = '';

const HMAC_MEMBER = /,"hmac":"([0-9a-f]{64})"\}$/;
const HMAC_MEMBER_LENGTH = ',"hmac":"'.length + 64 + '"}'.length;
const PREV = /^(?:[0-9a-f]{64})?$/;

export type ChainKey = KeyObject;

export function chainKey(key: Buffer): ChainKey {
  return createSecretKey(key);
}

/** The MAC of a batch, from the canonical forms of its entries in order. */
export function batchMac(key: ChainKey, canonicals: readonly string[]): string {
  return createHmac('sha256', key).update(canonicals.join('\n')).digest('hex');
}

/**
 * The MAC of an entry in the one-MAC-per-entry format of earlier releases (no "prev";
 * hex HMAC-SHA256(key, prevHmac + "\n" + canonical)): still verified, never written.
 */
export function legacyEntryMac(key: ChainKey, prevHmac: string, canonical: string): string {
  return createHmac('sha256', key).update(`${prevHmac}\n${canonical}`).digest('hex');
}

const NEWLINE = 0x0a;
const SEAL_BYTES = HMAC_MEMBER_LENGTH + 1; // ,"hmac":"<64 hex>"} and the newline

/**
 * Seals serialized events (JSON objects) as one batch whose first entry gets `firstSeq`:
 * the lines as UTF-8, each ending with "\n" (after `lead`, e.g. a newline the file still
 * needs), and the batch's hmac. Each event is encoded once, straight into the batch's
 * buffer, and the MAC is computed over the very bytes that are written.
 */
export function sealBatch(key: ChainKey, prevHmac: string, eventJsons: readonly string[], firstSeq: number, lead = ''): { data: Buffer; hmac: string } {
  // Exact event sizes, plus per entry at most ,"seq":<16 digits>} and a newline.
  let capacity = Buffer.byteLength(lead) + ',"prev":""'.length + prevHmac.length + SEAL_BYTES;
  for (const json of eventJsons) capacity += Buffer.byteLength(json) + 32;
  const buffer = Buffer.allocUnsafe(capacity);
  let end = buffer.write(lead, 0);
  const macFrom = end;
  for (let i = 0; i < eventJsons.length; i++) {
    // The event without its closing brace, then its chain members and the brace again.
    end += buffer.write(eventJsons[i] ?? '{}', end) - 1;
    end += buffer.write(i === 0 ? `,"seq":${firstSeq},"prev":"${prevHmac}"}` : `,"seq":${firstSeq + i}}`, end, 'latin1');
    buffer[end++] = NEWLINE;
  }
  // canonical_1 "\n" … canonical_k: the bytes before the last newline.
  const hmac = createHmac('sha256', key).update(buffer.subarray(macFrom, end - 1)).digest('hex');
  // The seal goes inside the last entry's closing brace.
  end -= 2;
  end += buffer.write(`,"hmac":"${hmac}"}\n`, end, 'latin1');
  return { data: buffer.subarray(0, end), hmac };
}

export interface ParsedLine {
  seq: number;
  /** Set on the first entry of a batch: the previous batch's hmac. */
  prev?: string;
  /** Set on the last entry of a batch: the batch's MAC. */
  hmac?: string;
  /** The line without its hmac member: what the MAC covers. */
  canonical: string;
  /** The parsed entry (canonical JSON, i.e. without hmac). */
  entry: Record<string, unknown>;
}

/** The last entry of a batch. */
export type SealLine = ParsedLine & { hmac: string };

export function isSeal(line: ParsedLine | undefined): line is SealLine {
  return line?.hmac !== undefined;
}

/** Parses one line; undefined if it is not a well-formed entry (sealed or not). */
export function parseLine(line: string): ParsedLine | undefined {
  const match = HMAC_MEMBER.exec(line);
  const canonical = match ? `${line.slice(0, line.length - HMAC_MEMBER_LENGTH)}}` : line;
  let entry: unknown;
  try {
    entry = JSON.parse(canonical);
  } catch {
    return undefined;
  }
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) return undefined;
  const fields = entry as Record<string, unknown>;
  const seq = fields.seq;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) return undefined;
  const parsed: ParsedLine = { seq, canonical, entry: fields };
  if (Object.hasOwn(fields, 'prev')) {
    if (typeof fields.prev !== 'string' || !PREV.test(fields.prev)) return undefined;
    parsed.prev = fields.prev;
  }
  if (match?.[1]) parsed.hmac = match[1];
  return parsed;
}
