// The tamper-evident line format shared by the writer and the verifier.
//
// The writer commits events in batches (group commit, log.ts), and each batch carries
// one MAC instead of one per entry: an HMAC per entry was the largest single cost of
// auditing a call. Every line is still one entry with its own seq, and the seal lists a
// digest per entry, so the verifier still names the exact entry that was changed:
//
//   canonical_i = JSON of entry i: the event (fixed key order), then "seq", and on the
//                 first entry of a batch also "prev": the previous batch's hmac
//                 (CHAIN_GENESIS before the first batch)
//   digest_i    = the first 16 bytes of SHA-256(canonical_i), hex
//   digests     = digest_1 + … + digest_k
//   hmac        = hex HMAC-SHA256(key, digests)
//   lines       = canonical_1 … canonical_k, the last one with
//                 ,"digests":"<digests>","hmac":"<hex>" appended before its closing brace
//                 (it seals the batch)
//
// The MAC authenticates the digest list, and the digests pin each line: a changed line is
// the one whose digest differs, a changed seal fails the MAC. A batch verifies on its own
// (its link to the previous batch is inside its first line, so inside the MAC), and the
// batches chain to each other through "prev", across rotated files (a file always starts
// with a batch). Removed, added or moved entries break the seq order or the digest count.
import { createHmac, createSecretKey, hash, type KeyObject } from 'node:crypto';

/** prev of the very first batch (seq 1): independent of any file name. */
export const CHAIN_GENESIS = '';

/**
 * Key in `details` of a link record: the first record of a file that does not start the
 * chain (a SECURITY event, written by the log when it starts such a file). A chain may
 * start mid-way only at one (older files removed by retention); anything else is a file
 * whose start was cut.
 */
export const CHAIN_LINK = 'audit_chain';

/** What a link record says (details[CHAIN_LINK]). */
export interface ChainLinkDetails {
  /** seq of the last entry before this file (this record's seq − 1). */
  continues_from_seq: number;
  cause: 'rotation' | 'start' | 'renamed' | 'removed' | 'truncated';
  /** Where the previous entries are, when known. */
  previous_file?: string;
}

/** The link a parsed entry carries, if it is a link record for its own seq. */
export function chainLinkOf(entry: Record<string, unknown>, seq: number): ChainLinkDetails | undefined {
  if (entry.type !== 'SECURITY' || entry.details === null || typeof entry.details !== 'object') return undefined;
  const link = (entry.details as Record<string, unknown>)[CHAIN_LINK] as Partial<ChainLinkDetails> | undefined;
  return link?.continues_from_seq === seq - 1 ? (link as ChainLinkDetails) : undefined;
}

const SEAL_MEMBERS = /,"digests":"((?:[0-9a-f]{32})+)","hmac":"([0-9a-f]{64})"\}$/;
/** The MAC member of the one-MAC-per-entry format of earlier releases (verified, never written). */
const LEGACY_HMAC_MEMBER = /,"hmac":"([0-9a-f]{64})"\}$/;
/** Hex characters of one entry's digest (128 bits: second preimages stay out of reach). */
export const DIGEST_HEX = 32;
const PREV = /^(?:[0-9a-f]{64})?$/;

export type ChainKey = KeyObject;

export function chainKey(key: Buffer): ChainKey {
  return createSecretKey(key);
}

/** An entry's digest, from its canonical form (as text or as the UTF-8 bytes written). */
export function entryDigest(canonical: string | Uint8Array): string {
  return hash('sha256', canonical, 'hex').slice(0, DIGEST_HEX);
}

/** Writes entryDigest(canonical) at `at` as its DIGEST_HEX bytes, without slicing a string. */
function writeEntryDigest(target: Buffer, at: number, canonical: Uint8Array): void {
  target.write(hash('sha256', canonical, 'hex'), at, DIGEST_HEX, 'latin1');
}

/** The MAC of a batch, over its entries' digests in order (hex, as text or as its bytes). */
export function batchMac(key: ChainKey, digests: string | Uint8Array): string {
  return createHmac('sha256', key).update(digests).digest('hex');
}

/**
 * The MAC of an entry in the one-MAC-per-entry format of earlier releases (no "prev";
 * hex HMAC-SHA256(key, prevHmac + "\n" + canonical)): still verified, never written.
 */
export function legacyEntryMac(key: ChainKey, prevHmac: string, canonical: string): string {
  return createHmac('sha256', key).update(`${prevHmac}\n${canonical}`).digest('hex');
}

const NEWLINE = 0x0a;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const ZERO = 0x30;
const SEQ_MEMBER = Buffer.from(',"seq":', 'latin1');
const DIGESTS_OPEN = ',"digests":"';
/** ,"digests":"","hmac":"<64 hex>"} and the newline, without the digests themselves. */
const SEAL_BYTES = ',"digests":"","hmac":"'.length + 64 + '"}'.length + 1;
/** Per entry at most ,"seq":<16 digits>} and a newline (its digest is counted apart). */
const SEQ_BYTES = SEQ_MEMBER.length + 16 + 2;
const INITIAL_EVENT_BYTES = 64 * 1024;

/**
 * Serialized events (JSON objects) waiting for their batch, encoded to UTF-8 as they
 * arrive: a read call's entry waits up to the fsync interval, and as bytes outside the
 * JS heap it costs the garbage collector nothing meanwhile. Reusable (clear()).
 */
export class EventBuffer {
  private bytes = Buffer.allocUnsafe(INITIAL_EVENT_BYTES);
  private used = 0;
  /** The end offset of each event. */
  private readonly ends: number[] = [];

  get count(): number {
    return this.ends.length;
  }

  get byteLength(): number {
    return this.used;
  }

  /** Capacity kept after clear(), so one burst of huge events does not pin its memory. */
  get capacity(): number {
    return this.bytes.length;
  }

  push(json: string): void {
    // UTF-8 takes at most 3 bytes per UTF-16 code unit.
    const target = this.reserve(json.length * 3);
    this.end(this.used + target.write(json, this.used));
  }

  /**
   * Room for `bytes` more bytes: the buffer to write the next event into, from
   * `byteLength` on. Nothing counts as written until end().
   */
  reserve(bytes: number): Buffer {
    if (this.used + bytes > this.bytes.length) {
      const grown = Buffer.allocUnsafe(Math.max(this.bytes.length * 2, this.used + bytes));
      this.bytes.copy(grown, 0, 0, this.used);
      this.bytes = grown;
    }
    return this.bytes;
  }

  /** Ends the event written after reserve() at offset `end`. */
  end(end: number): void {
    this.used = end;
    this.ends.push(end);
  }

  /** Event `index`, as written (a view, valid until the buffer is written to or cleared). */
  event(index: number): Buffer {
    return this.bytes.subarray(this.startOf(index), this.ends[index] ?? 0);
  }

  clear(): void {
    this.used = 0;
    this.ends.length = 0;
  }

  /** Copies event `index` without its closing brace into `target` at `at`; returns the new end. */
  copyOpenEvent(index: number, target: Buffer, at: number): number {
    const start = this.startOf(index);
    const end = this.ends[index] ?? start;
    return at + this.bytes.copy(target, at, start, Math.max(start, end - 1));
  }

  /** Where event `index` starts: where the one before it ends. */
  private startOf(index: number): number {
    return index === 0 ? 0 : (this.ends[index - 1] ?? 0);
  }
}

/** Writes the decimal digits of a non-negative safe integer at `at`; returns the new end. */
export function writeDecimal(target: Uint8Array, at: number, value: number): number {
  let digits = 1;
  for (let rest = value; rest >= 10; rest = Math.floor(rest / 10)) digits++;
  let rest = value;
  for (let i = at + digits - 1; i >= at; i--) {
    target[i] = ZERO + (rest % 10);
    rest = Math.floor(rest / 10);
  }
  return at + digits;
}

/**
 * Seals waiting events as one batch whose first entry gets `firstSeq`: the lines as
 * UTF-8, each ending with "\n" (after `lead`, e.g. a newline the file still needs), and
 * the batch's hmac. Each entry is laid out once, straight into the batch's buffer, and
 * the digests and MAC are computed over the very bytes that are written.
 *
 * The batch is laid out in `scratch` when it is large enough (the returned data is then a
 * view of it, valid until scratch is reused), else in a new buffer.
 */
export function sealBatch(key: ChainKey, prevHmac: string, events: EventBuffer, firstSeq: number, lead = '', scratch?: Buffer): { data: Buffer; hmac: string } {
  const count = events.count;
  const capacity = sealCapacity(prevHmac, events, lead);
  const buffer = scratch && scratch.length >= capacity ? scratch : Buffer.allocUnsafe(capacity);
  // The digests wait at the buffer's tail, as hex, until the seal takes them: the lines
  // never reach it (sealCapacity), and no string is built per entry.
  const digestBytes = count * DIGEST_HEX;
  const digestsAt = capacity - digestBytes;
  let end = buffer.write(lead, 0);
  for (let i = 0; i < count; i++) {
    const start = end;
    // The event without its closing brace, then its chain members and the brace again.
    end = events.copyOpenEvent(i, buffer, end);
    // No comma after the brace of an event without members.
    end += SEQ_MEMBER.copy(buffer, end, buffer[end - 1] === OPEN_BRACE ? 1 : 0);
    end = writeDecimal(buffer, end, firstSeq + i);
    if (i === 0) end += buffer.write(`,"prev":"${prevHmac}"`, end, 'latin1');
    buffer[end++] = CLOSE_BRACE;
    // The digest covers the very bytes written for this entry.
    writeEntryDigest(buffer, digestsAt + i * DIGEST_HEX, buffer.subarray(start, end));
    buffer[end++] = NEWLINE;
  }
  const hmac = batchMac(key, buffer.subarray(digestsAt, capacity));
  // The seal goes inside the last entry's closing brace.
  end -= 2;
  end += buffer.write(DIGESTS_OPEN, end, 'latin1');
  buffer.copyWithin(end, digestsAt, capacity);
  end += digestBytes;
  end += buffer.write(`","hmac":"${hmac}"}\n`, end, 'latin1');
  return { data: buffer.subarray(0, end), hmac };
}

/** The most bytes sealBatch may need for these events. */
export function sealCapacity(prevHmac: string, events: EventBuffer, lead = ''): number {
  return Buffer.byteLength(lead) + ',"prev":""'.length + prevHmac.length + SEAL_BYTES + events.byteLength + events.count * (SEQ_BYTES + DIGEST_HEX);
}

export interface ParsedLine {
  seq: number;
  /** Set on the first entry of a batch: the previous batch's hmac. */
  prev?: string;
  /** Set on the last entry of a batch: the batch's MAC. */
  hmac?: string;
  /** Set on the last entry of a batch: its entries' digests, in order. */
  digests?: string;
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
  const seal = SEAL_MEMBERS.exec(line);
  const legacyMac = seal ? undefined : LEGACY_HMAC_MEMBER.exec(line);
  const match = seal ?? legacyMac;
  const canonical = match ? `${line.slice(0, line.length - match[0].length)}}` : line;
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
  if (seal?.[1] && seal[2]) {
    parsed.digests = seal[1];
    parsed.hmac = seal[2];
  } else if (legacyMac?.[1]) {
    parsed.hmac = legacyMac[1];
  }
  return parsed;
}
