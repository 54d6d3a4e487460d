// API key tokens: `dvk_<key id>_<secret>` (src/authn/secret-token.ts).
import { SecretTokenFormat } from './secret-token.js';

export { secretMatches, sha256Hex } from './secret-token.js';

const API_KEY_TOKENS = new SecretTokenFormat('dvk_');

export interface ParsedToken {
  readonly keyId: string;
  readonly secret: string;
}

export function newKeyId(): string {
  return API_KEY_TOKENS.newId();
}

export function newToken(keyId = newKeyId()): { token: string; keyId: string; secretSha256: string } {
  const { token, secretSha256 } = API_KEY_TOKENS.issue(keyId);
  return { token, keyId, secretSha256 };
}

/** Undefined for anything that is not a well-formed token; never throws. */
export function parseToken(token: string): ParsedToken | undefined {
  const parsed = API_KEY_TOKENS.parse(token);
  return parsed && { keyId: parsed.id, secret: parsed.secret };
}

/** The token from `authorization: Bearer …` or `x-api-key`, if either is present. */
export function tokenFromHeaders(authorization: unknown, apiKey: unknown): string | undefined {
  if (typeof authorization === 'string') {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization);
    if (match) return match[1];
  }
  return typeof apiKey === 'string' && apiKey !== '' ? apiKey : undefined;
}
