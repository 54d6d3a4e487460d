// Request validation shared by the storage handlers and the manager: names per backend
// (each error names the request field), tags, sizes, and the time a snapshot stands for.
import { validateImageName, validateLvName, validatePoolName, validateVgName } from '../backends/validate.js';
import { InvalidArgumentError } from '../rpc/errors.js';
import { MAX_USER_TAGS, type BackendKind } from '../backends/storage-backend.js';

/** 64 PiB: above what either backend accepts, and far below uint64 overflow in any sum. */
export const MAX_VOLUME_BYTES = 64n * 1024n ** 5n;
const TAG_KEY = /^[A-Za-z0-9_.-]{1,64}$/;
// Both RBD image-meta values and LVM tags (lvm(8): A-Z a-z 0-9 _ + . - / = ! : # &) hold these.
const TAG_VALUE = /^[A-Za-z0-9_+.\-/=:]{0,128}$/;

export interface VolumeKey {
  readonly backend: BackendKind;
  readonly pool: string;
  readonly name: string;
}

/** `rbd:pool/name`: how operations, audit and messages name a volume. */
export function volumeLabel(key: VolumeKey): string {
  return `${key.backend}:${key.pool}/${key.name}`;
}

export function validatePool(backend: BackendKind, value: unknown, field: string): string {
  return backend === 'rbd' ? validatePoolName(value, field) : validateVgName(value, field);
}

export function validateVolumeName(backend: BackendKind, value: unknown, field: string): string {
  return backend === 'rbd' ? validateImageName(value, field) : validateLvName(value, field);
}

export function validateSize(bytes: bigint, field: string): bigint {
  if (bytes <= 0n) throw new InvalidArgumentError(field, 'must be greater than 0');
  if (bytes > MAX_VOLUME_BYTES) throw new InvalidArgumentError(field, 'must be at most 64 PiB');
  return bytes;
}

/** The tag a volume provisioned from a library image carries: the image's SHA-256 (reserved: users cannot set "debvisor*" keys). */
export const IMAGE_DIGEST_TAG = 'debvisor.image_sha256';

/** The tag of a volume an operation made (CreateVm): its id. An undo removes only volumes carrying its own id. */
export const OPERATION_TAG = 'debvisor.operation';

/** `tags` plus the reserved tag naming the operation that makes the volume, when there is one. */
export function withMadeBy(tags: Record<string, string>, operationId: string | undefined): Record<string, string> {
  return operationId === undefined ? tags : { ...tags, [OPERATION_TAG]: operationId };
}

export function validateTags(tags: Readonly<Record<string, string>>, field = 'tags'): Record<string, string> {
  const entries = Object.entries(tags);
  if (entries.length > MAX_USER_TAGS) throw new InvalidArgumentError(field, `at most ${MAX_USER_TAGS} tags`);
  for (const [key, value] of entries) {
    if (!TAG_KEY.test(key)) throw new InvalidArgumentError(field, 'keys are 1–64 letters, digits and _ . -');
    // Keys starting with "debvisor" hold ownership and bookkeeping; a user must not forge them.
    if (key.toLowerCase().startsWith('debvisor')) throw new InvalidArgumentError(`${field}[${key}]`, "keys starting with 'debvisor' are reserved");
    if (!TAG_VALUE.test(value)) throw new InvalidArgumentError(`${field}[${key}]`, 'values are at most 128 letters, digits and _ + . - / = :');
  }
  return { ...tags };
}

// 2026-01-15, 20260115, 2026-01-15T03-00-00Z, 20260115T030000Z, 20260115T0300 (ISO-ish, no colons: snapshot names have none).
const NAME_TIME = /(?<!\d)(\d{4})-?(\d{2})-?(\d{2})(?:[T_-](\d{2})-?(\d{2})(?:-?(\d{2}))?Z?)?(?!\d)/;

/**
 * The time a snapshot name carries ("daily-2026-01-15", "backup-20260115T0300Z"), if any:
 * snapshots made by scripts or imported from elsewhere name the moment they stand for,
 * which retention must use instead of when the backend object was made. UTC.
 */
export function timeFromName(name: string): Date | undefined {
  const m = NAME_TIME.exec(name);
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = Array.from({ length: 6 }, (_, i) => Number(m[i + 1] ?? 0)) as [number, number, number, number, number, number];
  if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59 || year < 1970) return undefined;
  const time = new Date(Date.UTC(year, month - 1, day, hour, minute, second));
  // Rejects 2026-02-31 and the like (Date.UTC rolls them over).
  return time.getUTCDate() === day ? time : undefined;
}
