// Per-source limit on the audit records anyone can cause without credentials: the records
// of unauthenticated calls and AUTH_FAILED. What is dropped is counted per source and
// reported in one summary record per source per interval (log.ts), never silently.
import type { AuditEventInput } from './event.js';

export interface FloodLimits {
  /** Records kept per source address per interval; beyond it they are dropped and counted. */
  recordsPerSource: number;
  intervalMs: number;
  /** Sources tracked per interval; further sources share one budget, OTHER_SOURCES. */
  maxSources: number;
}

/** 20 records per source per 10 s; past 1,000 sources, one shared budget (so at most ~21,000 records per interval, summaries included). */
export const DEFAULT_FLOOD_LIMITS: FloodLimits = { recordsPerSource: 20, intervalMs: 10_000, maxSources: 1_000 };

/** The shared budget of sources beyond maxSources. */
export const OTHER_SOURCES = 'other';

/** A record anyone can cause: AUTH_FAILED, or a call record without a principal. */
export function isUnauthenticated(event: AuditEventInput): boolean {
  return event.type === 'AUTH_FAILED' || (event.type === 'CALL' && event.principal === undefined);
}

/** The address of a record's source: "ip:port" as the chain writes it (IPv6 unbracketed), or "[v6]:port". */
export function sourceAddress(source: string | undefined): string {
  if (source === undefined || source === '') return 'unknown';
  const bracketed = /^\[([^\]]*)\](?::\d+)?$/.exec(source);
  if (bracketed?.[1] !== undefined) return bracketed[1];
  const port = /:\d+$/.exec(source);
  return port && port.index > 0 ? source.slice(0, port.index) : source;
}

export interface DroppedRecords {
  source: string;
  dropped: number;
}

/** Fixed-window counters per source address, for one interval at a time. */
export class FloodLimiter {
  private readonly counts = new Map<string, { kept: number; dropped: number }>();

  constructor(readonly limits: FloodLimits) {}

  /** Whether a record from `source` may be written now; false counts it as dropped. */
  admit(source: string | undefined, force = false): boolean {
    let address = sourceAddress(source);
    let count = this.counts.get(address);
    if (count === undefined) {
      if (this.counts.size >= this.limits.maxSources) address = OTHER_SOURCES;
      count = this.counts.get(address);
      if (count === undefined) this.counts.set(address, (count = { kept: 0, dropped: 0 }));
    }
    if (!force && count.kept < this.limits.recordsPerSource) {
      count.kept++;
      return true;
    }
    count.dropped++;
    return false;
  }

  /** Ends the interval: the sources that had records dropped, with how many; counters start again. */
  endInterval(): DroppedRecords[] {
    const dropped: DroppedRecords[] = [];
    for (const [source, count] of this.counts) if (count.dropped > 0) dropped.push({ source, dropped: count.dropped });
    this.counts.clear();
    return dropped;
  }
}
