// Where ProvisionVolume may read images from: a path relative to the configured images
// directory that stays inside it, also after symlinks are resolved.
import { realpath, stat } from 'node:fs/promises';
import { isAbsolute, relative, resolve, sep } from 'node:path';
import { InvalidArgumentError } from '../rpc/errors.js';

const FIELD = 'image_path';
const MAX_PATH = 1024;

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
}

/**
 * The real path of `imagePath` under `imagesDir`, or INVALID_ARGUMENT naming image_path.
 * Absolute paths and ".." are refused before the file system is touched; the realpath check
 * then catches symlinks pointing out of the directory.
 */
export async function resolveImagePath(imagesDir: string, imagePath: string): Promise<string> {
  if (imagePath === '') throw new InvalidArgumentError(FIELD, 'required: a path relative to the images directory');
  if (imagePath.length > MAX_PATH) throw new InvalidArgumentError(FIELD, `must be at most ${MAX_PATH} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(imagePath)) throw new InvalidArgumentError(FIELD, 'must not contain control characters');
  if (isAbsolute(imagePath)) throw new InvalidArgumentError(FIELD, 'must be relative to the images directory, not absolute');
  if (imagePath.split(/[\\/]/).includes('..')) throw new InvalidArgumentError(FIELD, "must not contain '..' components");
  // qemu-img reads "proto:..." as a protocol spec (rbd:, nbd:, http:), not a file.
  if (imagePath.split('/')[0]?.includes(':')) throw new InvalidArgumentError(FIELD, "must not start with a 'protocol:' prefix");
  let root: string;
  try {
    root = await realpath(imagesDir);
  } catch {
    throw new InvalidArgumentError(FIELD, 'the images directory of this node does not exist');
  }
  let real: string;
  try {
    real = await realpath(resolve(root, imagePath));
  } catch {
    throw new InvalidArgumentError(FIELD, 'no such image in the images directory');
  }
  if (!inside(root, real)) throw new InvalidArgumentError(FIELD, 'resolves (through a symlink) to a file outside the images directory');
  const info = await stat(real);
  if (!info.isFile()) throw new InvalidArgumentError(FIELD, 'is not a regular file');
  return real;
}
