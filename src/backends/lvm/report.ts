// Parsing `lvs --reportformat json --units b --nosuffix -o LV_FIELDS` (lvm2 2.03) into typed rows,
// and rows into VolumeInfo / SnapshotInfo. Output shape (captured in test/backends/fixtures/lvm/):
//   {"report": [{"lv": [{"lv_name":"disk0", "lv_size":"67108864", "lv_tags":"a,b", ...}]}]}
// Every value is a string; sizes are bytes; empty string means "not applicable".
import { ExecError } from '../exec.js';
import type { SnapshotInfo, VolumeInfo } from '../storage-backend.js';
import { decodeTags } from './tags.js';

/** The columns we ask lvs for, in this order. */
export const LV_FIELDS = [
  'lv_name',
  'vg_name',
  'lv_size',
  'lv_tags',
  'lv_time',
  'origin',
  'lv_attr',
  'lv_role',
  'data_percent',
  'snap_percent',
] as const;

export type LvRow = Record<(typeof LV_FIELDS)[number], string>;

function malformed(what: string): ExecError {
  return new ExecError({ kind: 'failed', backend: 'lvm', command: 'lvs', stderr: `unexpected lvs output: ${what}` });
}

/** The rows of an lvs JSON report; throws a `failed` ExecError when the shape is not lvm's. */
export function parseLvsReport(stdout: string): LvRow[] {
  let doc: unknown;
  try {
    doc = JSON.parse(stdout);
  } catch {
    throw malformed('not JSON');
  }
  const reports = (doc as { report?: unknown } | null)?.report;
  if (!Array.isArray(reports)) throw malformed('no "report" array');
  const rows: LvRow[] = [];
  for (const report of reports as unknown[]) {
    const lvs = (report as { lv?: unknown } | null)?.lv;
    if (lvs === undefined) continue; // a report section for another object type
    if (!Array.isArray(lvs)) throw malformed('"lv" is not an array');
    for (const raw of lvs as unknown[]) {
      if (typeof raw !== 'object' || raw === null) throw malformed('an lv entry is not an object');
      const entry = raw as Record<string, unknown>;
      const row = {} as LvRow;
      for (const field of LV_FIELDS) {
        const value = entry[field];
        if (typeof value !== 'string') throw malformed(`field ${field} is missing or not a string`);
        row[field] = value;
      }
      rows.push(row);
    }
  }
  return rows;
}

/** lvs prints lv_time as "2026-11-22 09:35:40 +0000". */
export function parseLvTime(text: string): Date | undefined {
  const m = /^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2}) ([+-]\d{2})(\d{2})$/.exec(text.trim());
  if (!m) return undefined;
  const date = new Date(`${m[1]}T${m[2]}${m[3]}:${m[4]}`);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

function roles(row: LvRow): string[] {
  return row.lv_role.split(',');
}

/** A thick (s, S merging) or thin snapshot. */
export function isSnapshot(row: LvRow): boolean {
  return roles(row).includes('snapshot') || row.lv_attr.startsWith('s') || row.lv_attr.startsWith('S');
}

/** An LV a user may see as a volume: public, not a snapshot, not a pool. */
export function isVolume(row: LvRow): boolean {
  const r = roles(row);
  return r.includes('public') && !r.includes('pool') && !isSnapshot(row);
}

/** size × "12.34" percent, in whole bytes; undefined when the percentage is not reported. */
function percentOf(size: bigint, percent: string): bigint | undefined {
  if (!/^\d+(\.\d+)?$/.test(percent)) return undefined;
  const hundredths = BigInt(Math.round(Number(percent) * 100));
  return (size * hundredths) / 10_000n;
}

function bytes(text: string, field: string): bigint {
  if (!/^\d+$/.test(text)) throw malformed(`${field} is not a byte count`);
  return BigInt(text);
}

export function toVolumeInfo(row: LvRow): VolumeInfo {
  const sizeBytes = bytes(row.lv_size, 'lv_size');
  const { owner, tags } = decodeTags(row.lv_tags);
  // A thin volume ('V') allocates on write and reports data_percent; a thick LV owns all its extents.
  const thin = row.lv_attr.startsWith('V');
  const usedBytes = thin ? (percentOf(sizeBytes, row.data_percent) ?? 0n) : sizeBytes;
  const info: VolumeInfo = { backend: 'lvm', pool: row.vg_name, name: row.lv_name, sizeBytes, usedBytes, tags, owner };
  const createTime = parseLvTime(row.lv_time);
  if (createTime) info.createTime = createTime;
  return info;
}

export function toSnapshotInfo(row: LvRow): SnapshotInfo {
  const { owner, label } = decodeTags(row.lv_tags);
  const cowBytes = bytes(row.lv_size, 'lv_size');
  // snap_percent is how full the COW area is; lvm reports it only for active snapshots.
  const used = percentOf(cowBytes, row.snap_percent) ?? percentOf(cowBytes, row.data_percent) ?? 0n;
  const info: SnapshotInfo = {
    pool: row.vg_name,
    volume: row.origin,
    name: row.lv_name,
    label,
    sizeBytes: used,
    protected: false,
    clones: [],
    owner,
  };
  const createTime = parseLvTime(row.lv_time);
  if (createTime) info.createTime = createTime;
  return info;
}
