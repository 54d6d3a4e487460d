// User session tokens and their verification: every refusal is UNAUTHENTICATED with a reason
// saying which check failed, and the secret is checked before anything else is revealed.
import { describe, expect, it } from 'vitest';
import { newToken, parseToken } from '../../src/authn/apikey-token.js';
import { SecretTokenFormat, sha256Hex } from '../../src/authn/secret-token.js';
import { USER_SESSION_TOKENS, UserSessionAuthenticator } from '../../src/authn/user-session.js';
import { USER_NAME, userPrincipalOf } from '../../src/rpc/impersonation-names.js';
import { InvalidArgumentError } from '../../src/rpc/errors.js';
import type { UserSessionRecord } from '../../src/store/records.js';
import { reasonOf } from './unauthenticated.js';

const NOW = Date.parse('2026-01-01T12:00:00Z');
const PANEL_FINGERPRINT = 'ab'.repeat(32);
const OTHER_FINGERPRINT = 'cd'.repeat(32);
const ALICE = { user: 'user:alice', certFingerprint: PANEL_FINGERPRINT };

/** The watch-fed session cache as the authenticator sees it. */
class FakeSessionCache {
  readonly records = new Map<string, UserSessionRecord>();
  get(id: string): UserSessionRecord | undefined {
    return this.records.get(id);
  }
}

function setup(overrides: Partial<UserSessionRecord> = {}) {
  const cache = new FakeSessionCache();
  const { token, id, secretSha256 } = USER_SESSION_TOKENS.issue();
  const record: UserSessionRecord = {
    schema_version: 1,
    id,
    user: 'user:alice',
    impersonated_by: 'spiffe://debvisor/panel/web-panel',
    cert_fingerprint_sha256: PANEL_FINGERPRINT,
    secret_sha256: secretSha256,
    created_at: new Date(NOW - 60_000).toISOString(),
    expires_at: new Date(NOW + 3_600_000).toISOString(),
    ...overrides,
  };
  cache.records.set(id, record);
  return { cache, auth: new UserSessionAuthenticator(cache), token, id, record };
}

describe('secret token formats', () => {
  it('issues dvs_<16 hex>_<43 base64url> tokens, stores only the SHA-256, and parses them back', () => {
    const { token, id, secretSha256 } = USER_SESSION_TOKENS.issue();
    expect(token).toMatch(/^dvs_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    const parsed = USER_SESSION_TOKENS.parse(token);
    expect(parsed?.id).toBe(id);
    expect(sha256Hex(parsed?.secret ?? '')).toBe(secretSha256);
    expect(token).not.toContain(secretSha256);
    expect(USER_SESSION_TOKENS.isId(id)).toBe(true);
  });

  it('keeps API key tokens and session tokens apart', () => {
    const key = newToken();
    expect(USER_SESSION_TOKENS.parse(key.token)).toBeUndefined();
    expect(parseToken(USER_SESSION_TOKENS.issue().token)).toBeUndefined();
    expect(parseToken(key.token)?.keyId).toBe(key.keyId);
  });

  it('refuses anything not exactly of the format, without throwing', () => {
    const { token } = USER_SESSION_TOKENS.issue();
    const format = new SecretTokenFormat('dvs_');
    for (const bad of ['', 'dvs_', token.slice(0, -1), `${token}x`, token.replace('_', '-'), `dvs_${'G'.repeat(16)}${token.slice(20)}`, `${token.slice(0, 21)}!${token.slice(22)}`, token.toUpperCase()]) {
      expect(format.parse(bad), bad).toBeUndefined();
    }
    for (const bad of ['', '0123456789abcde', '0123456789ABCDEF', '0123456789abcdef0', token]) expect(format.isId(bad), bad).toBe(false);
  });
});

describe('user names', () => {
  it('accepts RFC 1123-like names of at most 64 characters and makes them user: principals', () => {
    for (const good of ['a', 'alice', 'ci-bot.7', '0', 'a'.repeat(64)]) expect(USER_NAME.test(good), good).toBe(true);
    expect(userPrincipalOf('alice', 'user')).toBe('user:alice');
  });

  it('refuses the rest with INVALID_ARGUMENT naming the field', () => {
    for (const bad of ['', 'Alice', '-a', 'a-', '.a', 'a.', 'user:alice', 'a b', 'a_b', 'a'.repeat(65), 'é', 'a\nb']) {
      expect(USER_NAME.test(bad), bad).toBe(false);
      expect(() => userPrincipalOf(bad, 'impersonate-user')).toThrow(InvalidArgumentError);
    }
    expect(() => userPrincipalOf('Bad', 'user')).toThrow(/^user: /);
  });
});

describe('UserSessionAuthenticator', () => {
  it('returns the session id of a live session bound to the user and the certificate', () => {
    const { auth, token, id } = setup();
    expect(auth.verify(token, ALICE, NOW)).toBe(id);
  });

  it('refuses a malformed token, an API key and an unknown session', () => {
    const { auth } = setup();
    expect(reasonOf(() => auth.verify('nonsense', ALICE, NOW))).toBe('malformed user session token');
    expect(reasonOf(() => auth.verify(newToken().token, ALICE, NOW))).toBe('malformed user session token');
    const stranger = USER_SESSION_TOKENS.issue();
    expect(reasonOf(() => auth.verify(stranger.token, ALICE, NOW))).toBe(`unknown user session ${stranger.id}`);
  });

  it('refuses a wrong secret before telling anything about the session', () => {
    const { auth, id } = setup({ revoked_at: new Date(NOW).toISOString(), user: 'user:bob' });
    const forged = USER_SESSION_TOKENS.issue(id).token;
    expect(reasonOf(() => auth.verify(forged, ALICE, NOW))).toBe(`wrong secret for user session ${id}`);
  });

  it('refuses a session bound to another certificate', () => {
    const { auth, token, id } = setup();
    expect(reasonOf(() => auth.verify(token, { ...ALICE, certFingerprint: OTHER_FINGERPRINT }, NOW))).toBe(
      `user session ${id} is bound to another certificate (spiffe://debvisor/panel/web-panel, sha256 ${PANEL_FINGERPRINT})`,
    );
  });

  it('refuses a session for another user', () => {
    const { auth, token, id } = setup();
    expect(reasonOf(() => auth.verify(token, { ...ALICE, user: 'user:bob' }, NOW))).toBe(`user session ${id} is for user:alice, not user:bob`);
  });

  it('refuses a revoked session, as soon as the cache holds the revoked record', () => {
    const { cache, auth, token, id, record } = setup();
    expect(auth.verify(token, ALICE, NOW)).toBe(id);
    cache.records.set(id, { ...record, revoked_at: new Date(NOW).toISOString() });
    expect(reasonOf(() => auth.verify(token, ALICE, NOW))).toBe(`user session ${id} is revoked`);
  });

  it('refuses a session from the moment it expires', () => {
    const { auth, token, id, record } = setup();
    const end = Date.parse(record.expires_at);
    expect(auth.verify(token, ALICE, end - 1)).toBe(id);
    expect(reasonOf(() => auth.verify(token, ALICE, end))).toBe(`user session ${id} expired`);
  });

  it('refuses a session that is gone from the store', () => {
    const { cache, auth, token, id } = setup();
    cache.records.delete(id);
    expect(reasonOf(() => auth.verify(token, ALICE, NOW))).toBe(`unknown user session ${id}`);
  });
});
