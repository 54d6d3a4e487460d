// The file a store backup is kept in: one JSON header line, then the store's snapshot
// exactly as the backend wrote it (an SQLite database, or an etcd snapshot). The header
// carries the snapshot's size and SHA-256, so a copy can be checked on its own
// (`debvisor-rpcd restore --verify-only`) and a truncated or altered one is refused.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';

export const BACKUP_FORMAT = 'debvisor-store-backup';
/** A header is one short line; anything longer is not a backup. */
const MAX_HEADER_BYTES = 4096;

const headerSchema = z.strictObject({
  format: z.literal(BACKUP_FORMAT),
  version: z.literal(1),
  backend: z.enum(['embedded', 'etcd']),
  /** ISO 8601 time the snapshot was taken. */
  created: z.string(),
  /** The daemon (and its version) that took it. */
  taken_by: z.string(),
  bytes: z.number().int().nonnegative(),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type BackupHeader = z.infer<typeof headerSchema>;

export class BackupFileError extends Error {
  override readonly name = 'BackupFileError';
}

/** Flushes a file (or a directory's entries) to disk. */
export async function syncPath(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Size and SHA-256 of a stream of chunks, as they pass. */
export class SnapshotDigest {
  private readonly hash = createHash('sha256');
  bytes = 0;

  add(chunk: Uint8Array): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
  }

  hex(): string {
    return this.hash.digest('hex');
  }
}

/**
 * Writes `header` and the snapshot kept in `payloadPath` to `path` (mode 0600, through a
 * temporary file, flushed before the rename), then removes `payloadPath`.
 */
export async function writeBackupFile(path: string, header: BackupHeader, payloadPath: string): Promise<void> {
  const partial = `${path}.partial`;
  try {
    const line = `${JSON.stringify(headerSchema.parse(header))}\n`;
    await pipeline(
      async function* () {
        yield Buffer.from(line);
        yield* createReadStream(payloadPath);
      },
      createWriteStream(partial, { mode: 0o600, flags: 'wx' }),
    );
    await syncPath(partial);
    await rename(partial, path);
  } finally {
    await rm(partial, { force: true });
    await rm(payloadPath, { force: true });
  }
}

/** Who took a snapshot and what they sent, known once its chunks have ended. */
export interface SnapshotSummary {
  readonly backend: BackupHeader['backend'];
  /** e.g. "debvisor-rpcd 0.1.0 on host-a". */
  readonly takenBy: string;
  /** When it was taken (default: when saving began). */
  readonly created?: Date;
  /** What the sender says it sent: checked against what arrived before the file is kept. */
  readonly sent?: { readonly bytes: number; readonly sha256: string };
}

export interface SnapshotSource {
  readonly chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
  /** Asked once, after the last chunk. */
  readonly summary: () => SnapshotSummary;
}

/** Saves a snapshot as a backup file at `path` (which must not exist yet); returns its header. */
export async function saveBackup(path: string, source: SnapshotSource): Promise<BackupHeader> {
  const payload = `${path}.payload`;
  const digest = new SnapshotDigest();
  const started = new Date();
  try {
    await pipeline(
      async function* () {
        for await (const chunk of source.chunks) {
          digest.add(chunk);
          yield chunk;
        }
      },
      createWriteStream(payload, { mode: 0o600, flags: 'wx' }),
    );
    const summary = source.summary();
    const header: BackupHeader = {
      format: BACKUP_FORMAT,
      version: 1,
      backend: summary.backend,
      created: (summary.created ?? started).toISOString(),
      taken_by: summary.takenBy,
      bytes: digest.bytes,
      sha256: digest.hex(),
    };
    const { sent } = summary;
    if (sent && (sent.bytes !== header.bytes || sent.sha256 !== header.sha256)) {
      throw new BackupFileError(`the snapshot received (${header.bytes} bytes) differs from the one sent (${sent.bytes} bytes): nothing was written`);
    }
    await writeBackupFile(path, header, payload);
    return header;
  } finally {
    await rm(payload, { force: true });
  }
}

/** Reads and checks a backup's header; the snapshot starts at `offset`. */
export async function readBackupHeader(path: string): Promise<{ header: BackupHeader; offset: number }> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(MAX_HEADER_BYTES);
    const { bytesRead } = await handle.read(buffer, 0, MAX_HEADER_BYTES, 0);
    const end = buffer.subarray(0, bytesRead).indexOf(0x0a);
    if (end < 0) throw new BackupFileError(`${path}: not a debvisor store backup (no header line)`);
    let parsed: unknown;
    try {
      parsed = JSON.parse(buffer.subarray(0, end).toString('utf8'));
    } catch {
      throw new BackupFileError(`${path}: not a debvisor store backup (the header is not JSON)`);
    }
    const header = headerSchema.safeParse(parsed);
    if (!header.success) throw new BackupFileError(`${path}: not a debvisor store backup of a known version (${header.error.issues[0]?.message ?? 'bad header'})`);
    return { header: header.data, offset: end + 1 };
  } finally {
    await handle.close();
  }
}

/** Checks the snapshot after the header against the header's size and SHA-256. */
export async function verifyBackupFile(path: string): Promise<{ header: BackupHeader; offset: number }> {
  const { header, offset } = await readBackupHeader(path);
  const digest = new SnapshotDigest();
  for await (const chunk of createReadStream(path, { start: offset })) digest.add(chunk as Buffer);
  if (digest.bytes !== header.bytes) throw new BackupFileError(`${path}: the snapshot is ${digest.bytes} bytes, the header says ${header.bytes}: the file is truncated or was altered`);
  if (digest.hex() !== header.sha256) throw new BackupFileError(`${path}: the snapshot's SHA-256 does not match its header: the file is damaged or was altered`);
  return { header, offset };
}

/** Writes the etcd snapshot inside a verified backup to `out`, for etcdctl/etcdutl snapshot restore. */
export async function extractEtcdSnapshot(from: string, out: string): Promise<BackupHeader> {
  const { header, offset } = await verifyBackupFile(from);
  if (header.backend !== 'etcd') throw new BackupFileError(`${from} is an embedded-store backup, not an etcd snapshot: restore it with --data-dir`);
  await pipeline(createReadStream(from, { start: offset }), createWriteStream(out, { mode: 0o600, flags: 'wx' }));
  await syncPath(out);
  return header;
}
