// Parsers for `rbd … --format json` (Ceph 16.2 pacific). Captured outputs live in
// test/backends/fixtures/rbd/. Only the fields the backend uses are read; unknown ones are ignored.
import { z } from 'zod';

export class RbdParseError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RbdParseError';
  }
}

/** JSON.parse's reviver context (Node ≥ 21): the number's source text, so byte counts stay exact past 2^53. */
interface ReviverContext {
  readonly source?: string;
}

function parseJson(text: string, what: string): unknown {
  // Commands that have nothing to list print nothing at all (`image-meta list` on an image without metadata).
  if (text.trim() === '') return undefined;
  try {
    return JSON.parse(text, function (this: unknown, _key: string, value: unknown, context?: ReviverContext) {
      if (typeof value === 'number' && !Number.isSafeInteger(value) && context?.source !== undefined && /^\d+$/.test(context.source)) {
        return BigInt(context.source);
      }
      return value;
    } as (this: unknown, key: string, value: unknown) => unknown);
  } catch (err) {
    throw new RbdParseError(`rbd ${what}: output is not JSON`, { cause: err });
  }
}

function parseWith<T>(schema: z.ZodType<T>, text: string, what: string): T {
  const result = schema.safeParse(parseJson(text, what));
  if (!result.success) throw new RbdParseError(`rbd ${what}: unexpected output: ${z.prettifyError(result.error)}`);
  return result.data;
}

/** A byte count: a JSON number, or a bigint when it was past 2^53. */
const bytes = z.union([z.number().int().nonnegative(), z.bigint().nonnegative()]).transform((v) => BigInt(v));

const RBD_TIME = /^[A-Z][a-z]{2} ([A-Z][a-z]{2}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) (\d{4})$/;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/**
 * rbd prints times with ctime(3) ("Sun Nov 22 09:36:59 2026"): local time, no zone. The backend runs
 * rbd with TZ=UTC, so the text is UTC. Undefined for anything else (never a wrong date).
 */
export function parseRbdTime(text: string | undefined): Date | undefined {
  const m = text === undefined ? null : RBD_TIME.exec(text.trim());
  if (!m) return undefined;
  const [, mon, day, hh, mm, ss, year] = m;
  const month = MONTHS.indexOf(mon ?? '');
  if (month < 0) return undefined;
  return new Date(Date.UTC(Number(year), month, Number(day), Number(hh), Number(mm), Number(ss)));
}

const parentSchema = z.object({
  pool: z.string(),
  pool_namespace: z.string().optional(),
  image: z.string(),
  snapshot: z.string(),
});

/** "pool/image@snap", with the namespace when there is one ("pool/ns/image@snap"). */
export function parentSpec(parent: z.infer<typeof parentSchema>): string {
  const ns = parent.pool_namespace ? `${parent.pool_namespace}/` : '';
  return `${parent.pool}/${ns}${parent.image}@${parent.snapshot}`;
}

export interface RbdImageInfo {
  readonly name: string;
  readonly sizeBytes: bigint;
  readonly createTime: Date | undefined;
  /** "pool/image@snap" of an unflattened clone. */
  readonly parent: string | undefined;
}

const infoSchema = z.object({
  name: z.string(),
  size: bytes,
  create_timestamp: z.string().optional(),
  parent: parentSchema.optional(),
});

/** `rbd info POOL/IMAGE --format json` */
export function parseInfo(text: string): RbdImageInfo {
  const info = parseWith(infoSchema, text, 'info');
  return {
    name: info.name,
    sizeBytes: info.size,
    createTime: parseRbdTime(info.create_timestamp),
    parent: info.parent ? parentSpec(info.parent) : undefined,
  };
}

/** `rbd ls POOL --format json`: image names. */
export function parseLs(text: string): string[] {
  return parseWith(z.array(z.string()).optional(), text, 'ls') ?? [];
}

export interface RbdDiskUsage {
  readonly image: string;
  /** Undefined for the image itself (its head), the snapshot's name otherwise. */
  readonly snapshot: string | undefined;
  readonly provisionedBytes: bigint;
  readonly usedBytes: bigint;
}

const duSchema = z.object({
  images: z.array(
    z.object({
      name: z.string(),
      snapshot: z.string().optional(),
      provisioned_size: bytes,
      used_size: bytes,
    }),
  ),
});

/** `rbd du -p POOL --format json` and `rbd du POOL/IMAGE --format json`: one row per image head and per snapshot. */
export function parseDu(text: string): RbdDiskUsage[] {
  return parseWith(duSchema, text, 'du').images.map((row) => ({
    image: row.name,
    snapshot: row.snapshot,
    provisionedBytes: row.provisioned_size,
    usedBytes: row.used_size,
  }));
}

export interface RbdSnapshot {
  readonly id: number;
  readonly name: string;
  /** The image's provisioned size when the snapshot was taken (not bytes used). */
  readonly imageSizeBytes: bigint;
  readonly protected: boolean;
  readonly createTime: Date | undefined;
}

const snapSchema = z.array(
  z.object({
    id: z.number().int(),
    name: z.string(),
    size: bytes,
    // rbd prints the flag as a string: "true" / "false".
    protected: z.union([z.enum(['true', 'false']), z.boolean()]).transform((v) => v === true || v === 'true'),
    timestamp: z.string().optional(),
  }),
);

/** `rbd snap ls POOL/IMAGE --format json` */
export function parseSnapLs(text: string): RbdSnapshot[] {
  return (parseWith(snapSchema.optional(), text, 'snap ls') ?? []).map((s) => ({
    id: s.id,
    name: s.name,
    imageSizeBytes: s.size,
    protected: s.protected,
    createTime: parseRbdTime(s.timestamp),
  }));
}

const childrenSchema = z.array(z.object({ pool: z.string(), pool_namespace: z.string().optional(), image: z.string() }));

/** `rbd children POOL/IMAGE@SNAP --format json`: "pool/image" (or "pool/ns/image") of each clone. */
export function parseChildren(text: string): string[] {
  return (parseWith(childrenSchema.optional(), text, 'children') ?? []).map((c) => `${c.pool}/${c.pool_namespace ? `${c.pool_namespace}/` : ''}${c.image}`);
}

/** `rbd image-meta list POOL/IMAGE --format json`: prints nothing when there is no metadata. */
export function parseImageMeta(text: string): Record<string, string> {
  return parseWith(z.record(z.string(), z.string()).optional(), text, 'image-meta list') ?? {};
}

export interface RbdImageOwnership {
  readonly name: string;
  readonly sizeBytes: bigint;
  readonly owner: string;
  readonly snapshotOwners: string[];
}

const ownershipSchema = z.array(z.object({ name: z.string(), size: bytes, owner: z.string(), snapshot_owners: z.array(z.string()) }));

/** The ownership script's output (src/backends/rbd/ownership.ts): one entry per image. */
export function parseOwnership(text: string): RbdImageOwnership[] {
  return (parseWith(ownershipSchema.optional(), text, 'ownership') ?? []).map((image) => ({
    name: image.name,
    sizeBytes: image.size,
    owner: image.owner,
    snapshotOwners: image.snapshot_owners,
  }));
}
