// Parser for `virsh domjobinfo` (migration progress). virsh prints "Key:   value [unit]" lines;
// sizes are scaled ("12.345 MiB"), times in ms. Only the fields progress needs are typed.

export interface DomainJobInfo {
  /** "None", "Bounded", "Unbounded", "Completed", "Failed", "Cancelled". */
  readonly type: string;
  /** e.g. "Outgoing migration"; empty when virsh does not say. */
  readonly operation: string;
  readonly timeElapsedMs: number | undefined;
  readonly dataProcessedBytes: number | undefined;
  readonly dataRemainingBytes: number | undefined;
  readonly dataTotalBytes: number | undefined;
  readonly memoryBandwidthBytesPerSec: number | undefined;
  readonly expectedDowntimeMs: number | undefined;
  /** Data copied so far, 0–100, from processed/total (or total−remaining); undefined without totals. */
  readonly percent: number | undefined;
  /** Every "Key: value" pair as printed, for logs. */
  readonly fields: Readonly<Record<string, string>>;
}

const SIZE_UNITS: Record<string, number> = {
  B: 1, bytes: 1,
  KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4, PiB: 1024 ** 5, EiB: 1024 ** 6,
};

/** "12.345 MiB" → bytes; "300 ms" → 300; undefined if absent or not a number. */
function quantity(value: string | undefined, perSecond = false): number | undefined {
  if (value === undefined) return undefined;
  const [num, unit = ''] = value.trim().split(/\s+/, 2);
  const n = Number(num);
  if (num === undefined || num === '' || !Number.isFinite(n)) return undefined;
  const base = perSecond ? unit.replace(/\/s$/, '') : unit;
  const scale = base === '' || base === 'ms' ? 1 : SIZE_UNITS[base];
  return scale === undefined ? undefined : Math.round(n * scale);
}

/** Parses "Key:   value" lines (dominfo, domjobinfo). */
export function parseKeyValues(stdout: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of stdout.split(/\r?\n/)) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

export function parseDomjobinfo(stdout: string): DomainJobInfo {
  const fields = parseKeyValues(stdout);
  const dataProcessedBytes = quantity(fields['Data processed']);
  const dataRemainingBytes = quantity(fields['Data remaining']);
  const dataTotalBytes = quantity(fields['Data total']);
  let percent: number | undefined;
  if (dataTotalBytes !== undefined && dataTotalBytes > 0) {
    const done = dataRemainingBytes !== undefined ? dataTotalBytes - dataRemainingBytes : dataProcessedBytes;
    if (done !== undefined) percent = Math.max(0, Math.min(100, (done / dataTotalBytes) * 100));
  }
  if (fields['Job type'] === 'Completed') percent = 100;
  return {
    type: fields['Job type'] ?? '',
    operation: fields.Operation ?? '',
    timeElapsedMs: quantity(fields['Time elapsed']),
    dataProcessedBytes,
    dataRemainingBytes,
    dataTotalBytes,
    memoryBandwidthBytesPerSec: quantity(fields['Memory bandwidth'], true),
    expectedDowntimeMs: quantity(fields['Expected downtime']),
    percent,
    fields,
  };
}
