// API-key authentication, and the per-connection memory of a verified token: it must
// never outlive a change of the key (revocation, rotation, deletion) nor its expiry.
import { afterEach, describe, expect, it } from 'vitest';
import { ApiKeyAuthenticator } from '../../src/authn/apikey.js';
import { newToken } from '../../src/authn/apikey-token.js';
import { reasonOf } from './unauthenticated.js';
import type { RecordCache } from '../../src/store/cache.js';
import type { ApiKeyRecord } from '../../src/store/records.js';
import type { Repository } from '../../src/store/repository.js';

/** The watch-fed key index as the authenticator sees it: every change is a new record object. */
class FakeKeyIndex {
  readonly records = new Map<string, ApiKeyRecord>();
  get(id: string): ApiKeyRecord | undefined {
    return this.records.get(id);
  }
  put(record: ApiKeyRecord): void {
    this.records.set(record.id, record);
  }
}

const NOW = Date.parse('2026-01-01T12:00:00Z');

function keyRecord(keyId: string, secretSha256: string, overrides: Partial<ApiKeyRecord> = {}): ApiKeyRecord {
  return {
    schema_version: 1,
    id: keyId,
    owner: 'alice',
    description: 'test',
    permissions: ['access:whoami'],
    resource_globs: [],
    allowed_cidrs: [],
    secret_sha256: secretSha256,
    created_at: '2026-01-01T00:00:00.000Z',
    created_by: 'alice',
    use_count: 0,
    ...overrides,
  };
}

const open: ApiKeyAuthenticator[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((auth) => auth.close()));
});

function setup() {
  const index = new FakeKeyIndex();
  const repository = { mutate: () => Promise.resolve(undefined) } as unknown as Repository<ApiKeyRecord>;
  const auth = new ApiKeyAuthenticator(index as unknown as RecordCache<ApiKeyRecord>, repository, () => undefined, 60_000);
  open.push(auth);
  const { token, keyId, secretSha256 } = newToken();
  index.put(keyRecord(keyId, secretSha256));
  return { index, auth, token, keyId, secretSha256 };
}

describe('ApiKeyAuthenticator', () => {
  it('authenticates a key as its owner, on a connection and without one', () => {
    const { auth, token, keyId } = setup();
    const connection = {};
    for (const on of [undefined, connection, connection]) {
      expect(auth.authenticate(token, '10.0.0.1', NOW, on)).toMatchObject({ id: 'alice', kind: 'api_key', apiKey: { id: keyId } });
    }
  });

  it('a revocation takes effect on the next call of a connection that used the key', () => {
    const { index, auth, token, keyId } = setup();
    const connection = {};
    auth.authenticate(token, '10.0.0.1', NOW, connection);
    index.put({ ...index.get(keyId)!, revoked_at: '2026-01-01T12:00:00.000Z' });
    expect(reasonOf(() => auth.authenticate(token, '10.0.0.1', NOW, connection))).toBe(`API key ${keyId} is revoked`);
  });

  it('expiry takes effect on the next call after it, with the record unchanged', () => {
    const { index, auth, token, keyId } = setup();
    index.put({ ...index.get(keyId)!, expires_at: new Date(NOW + 1000).toISOString() });
    const connection = {};
    auth.authenticate(token, '10.0.0.1', NOW, connection);
    auth.authenticate(token, '10.0.0.1', NOW + 999, connection);
    expect(reasonOf(() => auth.authenticate(token, '10.0.0.1', NOW + 1000, connection))).toBe(`API key ${keyId} expired`);
  });

  it('a deleted key, or one whose secret changed, is verified from scratch', () => {
    const { index, auth, token, keyId } = setup();
    const connection = {};
    auth.authenticate(token, '10.0.0.1', NOW, connection);
    index.put({ ...index.get(keyId)!, secret_sha256: 'f'.repeat(64) });
    expect(reasonOf(() => auth.authenticate(token, '10.0.0.1', NOW, connection))).toBe(`wrong secret for API key ${keyId}`);
    index.records.delete(keyId);
    expect(reasonOf(() => auth.authenticate(token, '10.0.0.1', NOW, connection))).toBe(`unknown API key id ${keyId}`);
  });

  it('a narrowed CIDR list applies to the next call (the record changed)', () => {
    const { index, auth, token, keyId } = setup();
    const connection = {};
    auth.authenticate(token, '10.0.0.1', NOW, connection);
    index.put({ ...index.get(keyId)!, allowed_cidrs: ['192.168.0.0/16'] });
    expect(reasonOf(() => auth.authenticate(token, '10.0.0.1', NOW, connection))).toContain('outside its allowed networks');
  });

  it('remembers only the exact token: another token on the same connection is checked in full', () => {
    const { auth, token, keyId } = setup();
    const connection = {};
    auth.authenticate(token, '10.0.0.1', NOW, connection);
    // Same key id, last character of the secret changed.
    const forged = `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`;
    expect(reasonOf(() => auth.authenticate(forged, '10.0.0.1', NOW, connection))).toBe(`wrong secret for API key ${keyId}`);
    // The genuine token still works afterwards.
    expect(auth.authenticate(token, '10.0.0.1', NOW, connection).apiKey?.id).toBe(keyId);
  });

  it('does not carry a verification over to another connection', () => {
    const { index, auth, token, keyId } = setup();
    auth.authenticate(token, '10.0.0.1', NOW, {});
    index.put({ ...index.get(keyId)!, secret_sha256: 'f'.repeat(64) });
    expect(reasonOf(() => auth.authenticate(token, '10.0.0.1', NOW, {}))).toBe(`wrong secret for API key ${keyId}`);
  });

  it('counts every use, remembered or not', () => {
    const { auth, token, keyId } = setup();
    const connection = {};
    for (let i = 0; i < 3; i++) auth.authenticate(token, '10.0.0.1', NOW, connection);
    auth.authenticate(token, '10.0.0.1', NOW);
    const usage = (auth as unknown as { usage: Map<string, { count: number }> }).usage;
    expect(usage.get(keyId)?.count).toBe(4);
  });
});
