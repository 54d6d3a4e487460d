// Typed repositories: validation on both sides of the store, CAS updates, the key layout.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openEmbeddedStore } from '../../src/store/embedded/store.js';
import { ConflictError, NotFoundError } from '../../src/store/errors.js';
import { keepLeaseAlive } from '../../src/store/lease-keeper.js';
import type { PrincipalRecord, QuotaRecord } from '../../src/store/records.js';
import { CorruptRecordError } from '../../src/store/repository.js';
import { createRepositories, type Repositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';

const now = () => new Date().toISOString();
const principal = (id: string, roles: string[]): PrincipalRecord => ({ schema_version: 1, id, roles, updated_at: now() });

describe('repositories', () => {
  const dir = mkdtempSync(join(tmpdir(), 'debvisor-repos-'));
  let store: Store;
  let repos: Repositories;

  beforeAll(async () => {
    store = await openEmbeddedStore({ dir, leaseSweepIntervalMs: 100 });
    repos = createRepositories(store);
  });
  afterAll(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps spiffe principal ids inside one key segment, under the documented layout', async () => {
    const id = 'spiffe://debvisor/panel/web-panel';
    await repos.principals.create(id, principal(id, ['operator']));
    expect(repos.principals.keyOf(id)).toBe('/debvisor/rpc/principals/spiffe%3A%2F%2Fdebvisor%2Fpanel%2Fweb-panel');
    expect((await store.get(repos.principals.keyOf(id)))?.key).toBe(repos.principals.keyOf(id));
    expect((await repos.principals.get(id))?.value.roles).toEqual(['operator']);
    const quota: QuotaRecord = { schema_version: 1, principal: id, resource: 'snapshots', limit: 10, used: 0, updated_at: now() };
    await repos.quotas.create([id, 'snapshots'], quota);
    expect(repos.quotas.keyOf([id, 'snapshots'])).toBe('/debvisor/rpc/quotas/spiffe%3A%2F%2Fdebvisor%2Fpanel%2Fweb-panel/snapshots');
    const page = await repos.quotas.list({ pageSize: 10, under: id });
    expect(page.items.map((item) => item.value.resource)).toEqual(['snapshots']);
  });

  it('creates once, then updates only by compare-and-swap', async () => {
    const created = await repos.principals.create('p1', principal('p1', ['viewer']));
    await expect(repos.principals.create('p1', principal('p1', ['admin']))).rejects.toBeInstanceOf(ConflictError);
    const updated = await repos.principals.update('p1', principal('p1', ['developer']), created.modRevision);
    await expect(repos.principals.update('p1', principal('p1', ['admin']), created.modRevision)).rejects.toBeInstanceOf(ConflictError);
    expect((await repos.principals.get('p1'))?.value.roles).toEqual(['developer']);
    await expect(repos.principals.delete('p1', created.modRevision)).rejects.toBeInstanceOf(ConflictError);
    expect(await repos.principals.delete('p1', updated.modRevision)).toBe(true);
    await expect(repos.principals.require('p1', 'principal')).rejects.toBeInstanceOf(NotFoundError);
  });

  it('serialises concurrent read-modify-write through mutate', async () => {
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        repos.principals.mutate('p2', (current) => principal('p2', [...(current?.roles ?? []), `role${i}`]), 50),
      ),
    );
    expect((await repos.principals.get('p2'))?.value.roles).toHaveLength(20);
  });

  it('validates records on write and on read', async () => {
    await expect(repos.principals.put('bad', { schema_version: 1, id: 'bad', roles: 'admin' } as unknown as PrincipalRecord)).rejects.toThrow();
    await store.put(repos.principals.keyOf('tampered'), new TextEncoder().encode('{"schema_version":1,"id":"tampered"}'));
    await expect(repos.principals.get('tampered')).rejects.toBeInstanceOf(CorruptRecordError);
    await store.put(repos.principals.keyOf('future'), new TextEncoder().encode('{"schema_version":2,"id":"future","roles":[],"updated_at":"2026-01-01T00:00:00Z"}'));
    await expect(repos.principals.get('future')).rejects.toThrow(/schema_version/);
    await store.put(repos.principals.keyOf('garbage'), new TextEncoder().encode('not json'));
    await expect(repos.principals.get('garbage')).rejects.toThrow(/not JSON/);
  });

  it('pages with opaque tokens that cannot leave the listing', async () => {
    for (let i = 0; i < 25; i++) await repos.roles.put(`r${String(i).padStart(2, '0')}`, { schema_version: 1, name: `r${i}`, description: '', permissions: [], deny_permissions: [], resource_globs: [], updated_at: now() });
    const names: string[] = [];
    let token = '';
    do {
      const page = await repos.roles.list({ pageSize: 10, pageToken: token });
      names.push(...page.items.map((item) => item.value.name));
      token = page.nextPageToken;
    } while (token);
    expect(names).toHaveLength(25);
    const foreign = Buffer.from('/debvisor/rpc/apikeys/x').toString('base64url');
    await expect(repos.roles.list({ pageSize: 10, pageToken: foreign })).rejects.toBeInstanceOf(NotFoundError);
  });

  it('reads a role written before roles had resource globs as unscoped, and keeps the globs of one that has them', async () => {
    await store.put(repos.roles.keyOf('old'), new TextEncoder().encode('{"schema_version":1,"name":"old","description":"","permissions":["vm:list"],"deny_permissions":[],"updated_at":"2026-01-01T00:00:00Z"}'));
    expect((await repos.roles.get('old'))?.value.resource_globs).toEqual([]);
    const globs = [{ kind: 'user', glob: 'ci-*' }];
    await repos.roles.put('scoped', { schema_version: 1, name: 'scoped', description: '', permissions: ['access:impersonate'], deny_permissions: [], resource_globs: globs, updated_at: now() });
    expect((await repos.roles.get('scoped'))?.value.resource_globs).toEqual(globs);
  });
});

describe('lease keeper', () => {
  const dir = mkdtempSync(join(tmpdir(), 'debvisor-lease-'));
  let store: Store;
  beforeAll(async () => {
    store = await openEmbeddedStore({ dir, leaseSweepIntervalMs: 50 });
  });
  afterAll(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps a lease alive past its TTL, and reports its loss once revoked', async () => {
    const lease = await store.grantLease(1);
    await store.put('/debvisor/t/kept', new Uint8Array([1]), { lease });
    const lost: Error[] = [];
    const keeper = keepLeaseAlive(store, lease, 1, (err) => lost.push(err));
    await sleep(2500);
    expect(await store.get('/debvisor/t/kept')).toBeDefined();
    await store.revokeLease(lease);
    await sleep(800);
    expect(lost).toHaveLength(1);
    expect(lost[0]).toBeInstanceOf(NotFoundError);
    keeper.stop();
  });
});
