// API key tokens: `dvk_<key id>_<secret>`. The id is random and not derived from the
// secret, so lookup is O(1) by id; the secret is 256 random bits of which only the
// SHA-256 is stored.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

const PREFIX = 'dvk_';
const ID_BYTES = 8;
const SECRET_BYTES = 32;
const ID = /^[0-9a-f]{16}$/;
const SECRET = /^[A-Za-z0-9_-]{43}$/;

export interface ParsedToken {
  readonly keyId: string;
  readonly secret: string;
}

export function newKeyId(): string {
  return randomBytes(ID_BYTES).toString('hex');
}

export function newToken(keyId = newKeyId()): { token: string; keyId: string; secretSha256: string } {
  const secret = randomBytes(SECRET_BYTES).toString('base64url');
  return { token: `${PREFIX}${keyId}_${secret}`, keyId, secretSha256: sha256Hex(secret) };
}

/** Undefined for anything that is not a well-formed token; never throws. */
export function parseToken(token: string): ParsedToken | undefined {
  if (!token.startsWith(PREFIX) || token.length !== PREFIX.length + 16 + 1 + 43) return undefined;
  const keyId = token.slice(PREFIX.length, PREFIX.length + 16);
  const secret = token.slice(PREFIX.length + 17);
  if (token[PREFIX.length + 16] !== '_' || !ID.test(keyId) || !SECRET.test(secret)) return undefined;
  return { keyId, secret };
}

export function sha256Hex(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Constant-time comparison of a presented secret with the stored hash. */
export function secretMatches(secret: string, storedSha256Hex: string): boolean {
  const presented = createHash('sha256').update(secret).digest();
  const stored = Buffer.from(storedSha256Hex, 'hex');
  return stored.length === presented.length && timingSafeEqual(presented, stored);
}

/** The token from `authorization: Bearer …` or `x-api-key`, if either is present. */
export function tokenFromHeaders(authorization: unknown, apiKey: unknown): string | undefined {
  if (typeof authorization === 'string') {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization);
    if (match) return match[1];
  }
  return typeof apiKey === 'string' && apiKey !== '' ? apiKey : undefined;
}
