// The audit HMAC key: 32 random bytes, hex, in a file only its owner can read.
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, type Stats } from 'node:fs';
import { link, mkdir, open, readFile, stat, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';

export class AuditKeyError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AuditKeyError';
  }
}

const KEY_HEX = /^(?:[0-9a-fA-F]{2}){32,}$/;

function decode(path: string, text: string): Buffer {
  const hex = text.trim();
  if (!KEY_HEX.test(hex)) throw new AuditKeyError(`audit HMAC key file ${path} must hold at least 32 bytes as hex (64 hex digits)`);
  return Buffer.from(hex, 'hex');
}

function checkPrivate(path: string, st: Stats): void {
  if (!st.isFile()) throw new AuditKeyError(`audit HMAC key file ${path} is not a regular file`);
  if ((st.mode & 0o077) !== 0) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, '0');
    throw new AuditKeyError(`audit HMAC key file ${path} has mode ${mode}: group/other must have no access; run chmod 600 ${path}`);
  }
}

async function createKeyFile(path: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const temp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  const handle = await open(temp, 'wx', 0o600);
  try {
    await handle.writeFile(`${randomBytes(32).toString('hex')}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  try {
    // link() fails if the key appeared meanwhile: never replace a key that may already sign entries.
    await link(temp, path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  } finally {
    await unlink(temp);
  }
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/**
 * Reads the key, creating it (32 random bytes, hex, mode 0600, atomically) if the file
 * does not exist. Refuses a key file that group or other can access.
 */
export async function loadOrCreateHmacKey(path: string): Promise<Buffer> {
  let st: Stats;
  try {
    st = await stat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new AuditKeyError(`cannot read audit HMAC key file ${path}: ${(err as Error).message}`, { cause: err });
    try {
      await createKeyFile(path);
    } catch (createErr) {
      throw new AuditKeyError(`cannot create audit HMAC key file ${path}: ${(createErr as Error).message}`, { cause: createErr });
    }
    st = await stat(path);
  }
  checkPrivate(path, st);
  return decode(path, await readFile(path, 'utf8'));
}

/** Reads an existing key for verification. `loose` is set if group/other can access the file. */
export function readHmacKeySync(path: string): { key: Buffer; loose: boolean } {
  let text: string;
  let st: Stats;
  try {
    st = statSync(path);
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new AuditKeyError(`cannot read audit HMAC key file ${path}: ${(err as Error).message}`, { cause: err });
  }
  return { key: decode(path, text), loose: (st.mode & 0o077) !== 0 };
}
