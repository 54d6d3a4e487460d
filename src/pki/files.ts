// Crash-safe file writes for key material.
import { randomBytes } from 'node:crypto';
import { link, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Private keys: owner read/write only. */
export const PRIVATE_KEY_MODE = 0o600;
/** Certificates are public. */
export const CERTIFICATE_MODE = 0o644;

/**
 * Replace `path` atomically: readers see the old file or the complete new
 * one, never a torn write, even across a crash.
 *
 * Temp file lives in the same directory (rename is only atomic within one
 * filesystem); it is fsynced before the rename, and the directory after it,
 * so the rename itself is durable.
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const tmp = await writeTempFile(path, data, mode);
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dirname(path));
}

/**
 * Create `path` with `data`, failing with an EEXIST error if it already
 * exists. Used for the CA so an existing CA can never be overwritten.
 *
 * Why link() rather than open(O_EXCL): link is atomic *and* exclusive, so
 * `path` appears fully written or not at all; O_EXCL would expose a
 * half-written file if we crashed mid-write.
 */
export async function writeNewFileExclusive(path: string, data: string | Uint8Array, mode: number): Promise<void> {
  const tmp = await writeTempFile(path, data, mode);
  try {
    await link(tmp, path);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  await fsyncDir(dirname(path));
}

async function writeTempFile(path: string, data: string | Uint8Array, mode: number): Promise<string> {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  // 'wx': never follow/clobber something already at the temp name.
  let fh;
  try {
    fh = await open(tmp, 'wx', mode);
  } catch (err) {
    // The temp name is ours, not the caller's: say which file could not be written, and why.
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' || code === 'ENOTDIR' ? `directory ${dirname(path)} does not exist` : (code ?? String(err));
    throw new Error(`cannot write ${path}: ${why}`, { cause: err });
  }
  try {
    // open()'s mode is filtered by the umask; set it explicitly.
    await fh.chmod(mode);
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  return tmp;
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
