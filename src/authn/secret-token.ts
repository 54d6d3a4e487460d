// Bearer tokens `<prefix><id>_<secret>`: API keys (dvk_) and user sessions (dvs_). The id is
// random and not derived from the secret, so lookup is O(1) by id; the secret is 256 random
// bits of which only the SHA-256 is stored.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

const ID_BYTES = 8;
const SECRET_BYTES = 32;
const ID_LENGTH = ID_BYTES * 2;
const SECRET_LENGTH = 43;
const ID = /^[0-9a-f]{16}$/;
const SECRET = /^[A-Za-z0-9_-]{43}$/;

export interface IssuedToken {
  /** The whole token, shown to its holder once. */
  readonly token: string;
  readonly id: string;
  /** What is stored instead of the secret. */
  readonly secretSha256: string;
}

export interface ParsedSecretToken {
  readonly id: string;
  readonly secret: string;
}

export class SecretTokenFormat {
  private readonly length: number;

  constructor(readonly prefix: string) {
    this.length = prefix.length + ID_LENGTH + 1 + SECRET_LENGTH;
  }

  newId(): string {
    return randomBytes(ID_BYTES).toString('hex');
  }

  /** Whether `value` has the shape of an id of this format (16 lowercase hex digits). */
  isId(value: string): boolean {
    return ID.test(value);
  }

  issue(id = this.newId()): IssuedToken {
    const secret = randomBytes(SECRET_BYTES).toString('base64url');
    return { token: `${this.prefix}${id}_${secret}`, id, secretSha256: sha256Hex(secret) };
  }

  /** Undefined for anything that is not a well-formed token of this format; never throws. */
  parse(token: string): ParsedSecretToken | undefined {
    const at = this.prefix.length;
    if (token.length !== this.length || !token.startsWith(this.prefix) || token[at + ID_LENGTH] !== '_') return undefined;
    const id = token.slice(at, at + ID_LENGTH);
    const secret = token.slice(at + ID_LENGTH + 1);
    return ID.test(id) && SECRET.test(secret) ? { id, secret } : undefined;
  }
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
