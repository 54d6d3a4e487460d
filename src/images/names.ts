// How a library image is named in requests: an alias ("debian-12") or its digest
// ("sha256:<64 hex>"). Both are validated here before anything uses them.
import { InvalidArgumentError } from '../rpc/errors.js';

export const DIGEST_PREFIX = 'sha256:';
const DIGEST = /^[0-9a-f]{64}$/;
/** Alias names: safe as a key segment, a log value and a glob subject; no ':' so none looks like a digest. */
const ALIAS = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,126}$/;

/** A SHA-256 given by a caller: 64 hex characters (either case), returned lowercase. */
export function validateSha256(value: string, field: string): string {
  if (value === '') throw new InvalidArgumentError(field, 'required: the SHA-256 of the image, 64 hex characters');
  if (!/^[0-9A-Fa-f]{64}$/.test(value)) throw new InvalidArgumentError(field, 'must be 64 hex characters (a SHA-256 digest)');
  return value.toLowerCase();
}

/** An alias: 1–127 letters, digits and _ . + -, starting with a letter or digit. */
export function validateAlias(value: string, field: string): string {
  if (value === '') throw new InvalidArgumentError(field, 'must not be empty');
  if (value.length > 127) throw new InvalidArgumentError(field, 'must be at most 127 characters');
  if (!ALIAS.test(value) || value.includes('..')) {
    throw new InvalidArgumentError(field, 'may contain only letters, digits and _ . + -, start with a letter or digit, and hold no ".."');
  }
  return value;
}

export type ImageRef = { readonly kind: 'digest'; readonly sha256: string } | { readonly kind: 'alias'; readonly name: string };

/** A reference to a library image: "sha256:<hex>" or an alias. */
export function parseImageRef(value: string, field: string): ImageRef {
  if (value === '') throw new InvalidArgumentError(field, 'required: an image name or sha256:<hex digest>');
  if (value.startsWith(DIGEST_PREFIX)) {
    const hex = value.slice(DIGEST_PREFIX.length);
    if (!DIGEST.test(hex.toLowerCase())) throw new InvalidArgumentError(field, 'a digest is sha256: followed by 64 hex characters');
    return { kind: 'digest', sha256: hex.toLowerCase() };
  }
  return { kind: 'alias', name: validateAlias(value, field) };
}
