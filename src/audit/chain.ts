// The tamper-evident line format shared by the writer and the verifier.
//
//   canonical = JSON of the entry without `hmac`: the event (fixed key order), then "seq"
//   hmac      = hex HMAC-SHA256(key, prevHmac + "\n" + canonical)
//   line      = canonical with ,"hmac":"<hex>" appended before the closing brace
//
// prevHmac is the previous entry's hmac; for seq 1 it is CHAIN_GENESIS. The chain runs
// across rotated files. The verifier recomputes the MAC over the exact bytes of the line
// (minus the hmac member), so any byte-level change is detected.
import { createHmac, createSecretKey, type KeyObject } from 'node:crypto';

/** prevHmac of the very first entry (seq 1): independent of any file name. */
export const CHAIN_GENESIS = '';

const HMAC_MEMBER = /,"hmac":"([0-9a-f]{64})"\}$/;
const HMAC_MEMBER_LENGTH = ',"hmac":"'.length + 64 + '"}'.length;

export type ChainKey = KeyObject;

export function chainKey(key: Buffer): ChainKey {
  return createSecretKey(key);
}

export function entryMac(key: ChainKey, prevHmac: string, canonical: string): string {
  return createHmac('sha256', key).update(`${prevHmac}\n${canonical}`).digest('hex');
}

/** Seals one serialized event (a JSON object) at position `seq`: the line without its newline. */
export function sealEntry(key: ChainKey, prevHmac: string, eventJson: string, seq: number): { line: string; hmac: string } {
  const canonical = `${eventJson.slice(0, -1)},"seq":${seq}}`;
  const hmac = entryMac(key, prevHmac, canonical);
  return { line: `${canonical.slice(0, -1)},"hmac":"${hmac}"}`, hmac };
}

export interface ParsedLine {
  seq: number;
  hmac: string;
  canonical: string;
  /** The parsed entry (canonical JSON, i.e. without hmac). */
  entry: Record<string, unknown>;
}

/** Splits a line into its canonical part and MAC; undefined if it is not a well-formed entry. */
export function parseLine(line: string): ParsedLine | undefined {
  const match = HMAC_MEMBER.exec(line);
  if (!match?.[1]) return undefined;
  const canonical = `${line.slice(0, line.length - HMAC_MEMBER_LENGTH)}}`;
  let entry: unknown;
  try {
    entry = JSON.parse(canonical);
  } catch {
    return undefined;
  }
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) return undefined;
  const seq = (entry as Record<string, unknown>).seq;
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 1) return undefined;
  return { seq, hmac: match[1], canonical, entry: entry as Record<string, unknown> };
}
