// End-to-end API key life cycle and escalation: secrets shown once, no escalation,
// rights that follow the owner's roles, resource globs, revocation (also across two
// daemons on one etcd) and rotation with overlap.
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status as Status } from '@grpc/grpc-js';
import { toJson } from '@bufbuild/protobuf';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService, ListApiKeysResponseSchema, PrincipalKind } from '../../src/gen/debvisor/v1/access_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { ensureDevPki } from '../../src/pki/index.js';
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import type { TypedClient } from '../../src/client/client.js';
import { clientFor, startDaemon, type ClientPem, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { auditOf, auditRecord, codeOf, issueClientFor, rejection, traceIdOf } from '../support/security.js';

const ADMIN = 'spiffe://debvisor/admin/admin';
const DEVELOPER = 'spiffe://debvisor/keys/developer';
const OPERATOR = 'spiffe://debvisor/keys/operator';

type MethodsOf<T> = T extends GenService<infer S> ? S : never;
type Access = TypedClient<MethodsOf<typeof AccessService>>;

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
const T = { timeoutMs: 5000 };


describe('on the embedded store', () => {
  let daemon: RunningDaemon;
  let admin: Access;
  let anonymous: Access;
  let developer: Access;
  let operator: Access;
  const closers: { close(): void }[] = [];

  beforeAll(async () => {
    // The limiter allows a burst of 10% of a minute's limit (20 cells for developer, CreateApiKey costs 5).
    daemon = await startDaemon({ config: { rate_limit: { per_role_per_minute: { admin: 100_000, operator: 100_000, developer: 100_000 }, default_per_minute: 100_000 } } });
    admin = await clientFor(AccessService, daemon);
    anonymous = await clientFor(AccessService, daemon, null);
    const [dev, op]: ClientPem[] = await Promise.all([issueClientFor(daemon.pki, DEVELOPER), issueClientFor(daemon.pki, OPERATOR)]);
    developer = await clientFor(AccessService, daemon, dev);
    operator = await clientFor(AccessService, daemon, op);
    closers.push(admin, anonymous, developer, operator);
    await admin.bindRole({ principal: DEVELOPER, roleName: 'developer' }, T);
    await admin.bindRole({ principal: OPERATOR, roleName: 'operator' }, T);
  });

  afterAll(async () => {
    for (const client of closers) client.close();
    await daemon.cleanup();
  });

  async function vmsWithKey(): Promise<TypedClient<MethodsOf<typeof VmService>>> {
    const client = await clientFor(VmService, daemon, null);
    closers.push(client);
    return client;
  }

  it('CreateApiKey shows the secret once; ListApiKeys never returns it or its hash', async () => {
    const created = await admin.createApiKey({ description: 'shown once', permissions: ['vm:list'] }, T);
    const secret = created.secret;
    expect(secret).toMatch(/^dvk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$/);
    const secretPart = secret.slice(-43);
    const keyId = created.apiKey!.keyId;
    expect(secret).toContain(keyId);

    const listed = await admin.listApiKeys({ includeInactive: true }, T);
    expect(listed.apiKeys.map((k) => k.keyId)).toContain(keyId);
    const json = JSON.stringify(toJson(ListApiKeysResponseSchema, listed));
    for (const leak of [secret, secretPart, createHash('sha256').update(secretPart).digest('hex'), createHash('sha256').update(secret).digest('hex')]) {
      expect(json).not.toContain(leak);
    }
    expect(json).not.toMatch(/secret|sha256|hash/i);
  });

  it('a key authenticates as its owner: WhoAmI shows API_KEY, the key id and the owner', async () => {
    const created = await operator.createApiKey({ description: 'whoami', permissions: ['vm:get', 'vm:list'] }, T);
    const me = await anonymous.whoAmI({}, { ...T, metadata: bearer(created.secret) });
    expect(me.kind).toBe(PrincipalKind.API_KEY);
    expect(me.authMethod).toBe('api_key');
    expect(me.apiKeyId).toBe(created.apiKey!.keyId);
    expect(me.principalId).toBe(OPERATOR);
    expect(me.roles).toEqual(['operator']);
    expect(me.permissions).toEqual(['vm:get', 'vm:list']);
    expect(me.certFingerprintSha256).toBe('');
  });

  it('a developer cannot create a key with more than it holds', async () => {
    for (const permissions of [['storage:*'], ['*'], ['vm:list', 'vm:destroy'], ['access:binding:create']]) {
      const err = await rejection(developer.createApiKey({ description: 'escalate', permissions }, T));
      expect(err.code).toBe(Status.PERMISSION_DENIED);
      expect(err.details).toContain('cannot grant permissions you do not hold');
    }
    // Nor a key owned by someone else.
    const other = await rejection(developer.createApiKey({ description: 'for admin', permissions: ['vm:list'], owner: ADMIN }, T));
    expect(other.code).toBe(Status.PERMISSION_DENIED);
    // Within its rights it works.
    const ok = await developer.createApiKey({ description: 'fine', permissions: ['vm:list', 'storage:snapshot:create', 'storage:clone:*'] }, T);
    expect(ok.apiKey?.owner).toBe(DEVELOPER);
    // A key cannot mint a broader key either.
    const viaKey = await rejection(anonymous.createApiKey({ description: 'wider', permissions: ['vm:get'] }, { ...T, metadata: bearer(ok.secret) }));
    expect(viaKey.code).toBe(Status.PERMISSION_DENIED);
  });

  it("a key's rights shrink with its owner's roles", async () => {
    const principal = 'spiffe://debvisor/keys/shrinking';
    const client = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, principal));
    closers.push(client);
    await admin.bindRole({ principal, roleName: 'operator' }, T);
    const key = await client.createApiKey({ description: 'shrinks', permissions: ['vm:list'] }, T);
    const vms = await vmsWithKey();
    const before = await codeOf(vms.listVms({}, { ...T, metadata: bearer(key.secret) }));
    // Allowed through RBAC (the answer itself depends on the host's libvirt).
    expect(before.code).not.toBe(Status.PERMISSION_DENIED);

    await admin.unbindRole({ principal, roleName: 'operator' }, T);
    const after = await rejection(vms.listVms({}, { ...T, metadata: bearer(key.secret) }));
    expect(after.code).toBe(Status.PERMISSION_DENIED);
    expect(after.details).toContain('requires vm:list');
    const record = await auditOf(daemon, 'AUTHZ_DENIED', traceIdOf(after));
    expect(record).toMatchObject({ reason: 'not_granted', principal: { id: principal, kind: 'api_key', roles: [], key_id: key.apiKey!.keyId } });
  });

  it('resource globs: a key scoped to pool ci-* may act on ci-1, not on prod-1', async () => {
    const key = await operator.createApiKey(
      { description: 'ci', permissions: ['storage:*'], resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-*' }] },
      T,
    );
    const storage = await clientFor(StorageService, daemon, null);
    closers.push(storage);
    const inScope = await codeOf(storage.createSnapshot({ dataset: { pool: 'ci-1', name: 'disk0' }, snapshotName: 's1' }, { ...T, metadata: bearer(key.secret) }));
    expect(inScope.code).not.toBe(Status.PERMISSION_DENIED);
    // Past RBAC, the handler refuses the request itself (no backend named; no storage on this daemon).
    expect(inScope.code).toBe(Status.INVALID_ARGUMENT);

    const outside = await rejection(storage.createSnapshot({ dataset: { pool: 'prod-1', name: 'disk0' }, snapshotName: 's1' }, { ...T, metadata: bearer(key.secret) }));
    expect(outside.code).toBe(Status.PERMISSION_DENIED);
    expect(outside.details).toContain('this API key is not scoped to pool "prod-1"');
    expect(await auditOf(daemon, 'AUTHZ_DENIED', traceIdOf(outside))).toMatchObject({ reason: 'outside_key_scope', object: 'pool:prod-1' });
    // A name that only starts like the glob is not in scope either.
    const sneaky = await codeOf(storage.createSnapshot({ dataset: { pool: 'ci-1/../prod-1', name: 'disk0' }, snapshotName: 's1' }, { ...T, metadata: bearer(key.secret) }));
    expect(sneaky.code).toBe(Status.PERMISSION_DENIED);
  });

  it('RevokeApiKey: the very next call with the key is UNAUTHENTICATED', async () => {
    const key = await developer.createApiKey({ description: 'revoke me', permissions: ['vm:list'] }, T);
    const keyId = key.apiKey!.keyId;
    expect((await anonymous.whoAmI({}, { ...T, metadata: bearer(key.secret) })).apiKeyId).toBe(keyId);
    const revoked = await developer.revokeApiKey({ keyId }, T);
    expect(revoked.apiKey?.revokeTime).toBeDefined();
    const err = await rejection(anonymous.whoAmI({}, { ...T, metadata: bearer(key.secret) }));
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    expect((await auditOf(daemon, 'AUTH_FAILED', traceIdOf(err))).reason).toBe(`API key ${keyId} is revoked`);
    // Another principal's key looks absent, not forbidden.
    const foreign = await admin.createApiKey({ description: 'admin key', permissions: ['vm:list'] }, T);
    const probe = await rejection(developer.revokeApiKey({ keyId: foreign.apiKey!.keyId }, T));
    expect(probe.code).toBe(Status.NOT_FOUND);
  });

  it('RotateApiKey with a 2 s overlap: both keys work, then only the new one', async () => {
    const key = await developer.createApiKey({ description: 'rotate me', permissions: ['vm:list'] }, T);
    const rotated = await developer.rotateApiKey({ keyId: key.apiKey!.keyId, overlap: durationFromMs(2000) }, T);
    expect(rotated.apiKey?.rotatedFrom).toBe(key.apiKey!.keyId);
    expect(rotated.secret).not.toBe(key.secret);
    const rotatedAt = Date.now();
    expect((await anonymous.whoAmI({}, { ...T, metadata: bearer(key.secret) })).apiKeyId).toBe(key.apiKey!.keyId);
    expect((await anonymous.whoAmI({}, { ...T, metadata: bearer(rotated.secret) })).apiKeyId).toBe(rotated.apiKey!.keyId);
    await sleep(Math.max(0, rotatedAt + 2500 - Date.now()));
    const old = await rejection(anonymous.whoAmI({}, { ...T, metadata: bearer(key.secret) }));
    expect(old.code).toBe(Status.UNAUTHENTICATED);
    expect((await auditOf(daemon, 'AUTH_FAILED', traceIdOf(old))).reason).toBe(`API key ${key.apiKey!.keyId} expired`);
    expect((await anonymous.whoAmI({}, { ...T, metadata: bearer(rotated.secret) })).apiKeyId).toBe(rotated.apiKey!.keyId);
  });

  it('ids the store cannot key are INVALID_ARGUMENT, never INTERNAL', async () => {
    const long = `spiffe://debvisor/${'x'.repeat(600)}`;
    for (const call of [
      () => admin.bindRole({ principal: long, roleName: 'viewer' }, T),
      () => admin.unbindRole({ principal: long, roleName: 'viewer' }, T),
      () => admin.getQuota({ principal: long }, T),
      () => admin.deleteRole({ roleName: '' }, T),
      () => admin.revokeApiKey({ keyId: 'k'.repeat(600) }, T),
    ]) {
      expect((await rejection(call())).code).toBe(Status.INVALID_ARGUMENT);
    }
  });

  it('create, revoke, rotate and bind are SECURITY audit events', async () => {
    const reasons = ['api key created', 'api key revoked', 'api key rotated', 'role bound', 'role unbound'];
    for (const reason of reasons) {
      const record = await auditRecord(daemon, (r) => r.type === 'SECURITY' && r.reason === reason);
      expect(record.principal).toBeDefined();
      expect(String(record.object)).toMatch(/^(api_key|principal):/);
    }
    const bound = await auditRecord(daemon, (r) => r.type === 'SECURITY' && r.reason === 'role bound' && r.object === `principal:${DEVELOPER}`);
    expect(bound).toMatchObject({ principal: { id: ADMIN, roles: ['admin'] }, details: { role: 'developer' } });
  });
});

describe('revocation across two daemons on one etcd', () => {
  let etcd: EtcdCluster;
  let pkiDir: string;
  let a: RunningDaemon;
  let b: RunningDaemon;

  beforeAll(async () => {
    etcd = await startEtcd();
    pkiDir = await mkdtemp(join(tmpdir(), 'rpcd-shared-pki-'));
    await ensureDevPki(pkiDir);
    const env = { DEBVISOR_RPCD_STORE_BACKEND: 'etcd', DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(',') };
    [a, b] = await Promise.all([startDaemon({ pkiDir, env }), startDaemon({ pkiDir, env })]);
  });

  afterAll(async () => {
    await Promise.all([a.cleanup(), b.cleanup()]);
    await etcd.stop();
    await rm(pkiDir, { recursive: true, force: true });
  });

  it('a key revoked on daemon A is refused by daemon B within 1 s', async () => {
    const adminA = await clientFor(AccessService, a);
    const onB = await clientFor(AccessService, b, null);
    try {
      const key = await adminA.createApiKey({ description: 'shared', permissions: ['vm:list'] }, T);
      const keyId = key.apiKey!.keyId;
      // B learns of the key through its etcd watch.
      const createdAt = Date.now();
      for (;;) {
        const result = await codeOf(onB.whoAmI({}, { ...T, metadata: bearer(key.secret) }));
        if (result.code === Status.OK) break;
        if (Date.now() - createdAt > 5000) throw new Error(`daemon B never accepted the key: ${result.details}`);
        await sleep(20);
      }
      const propagation = Date.now() - createdAt;

      // Poll B every 20 ms from before the revocation is sent until B refuses the key.
      let refusedAt = -1;
      let polls = 0;
      const poller = (async () => {
        const start = Date.now();
        while (Date.now() - start < 6000) {
          polls++;
          const result = await codeOf(onB.whoAmI({}, { ...T, metadata: bearer(key.secret) }));
          if (result.code === Status.UNAUTHENTICATED) {
            refusedAt = Date.now();
            return;
          }
          if (result.code !== Status.OK) throw new Error(`unexpected ${result.code}: ${result.details}`);
          await sleep(20);
        }
      })();
      await sleep(50);
      const sentAt = Date.now();
      await adminA.revokeApiKey({ keyId }, T);
      const returnedAt = Date.now();
      await poller;
      const afterReturn = refusedAt - returnedAt;
      console.log(
        `etcd revocation: daemon B refused the key ${afterReturn} ms after RevokeApiKey returned on A ` +
          `(${refusedAt - sentAt} ms after it was sent; the call took ${returnedAt - sentAt} ms; ${polls} polls at 20 ms; creation reached B after ${propagation} ms)`,
      );
      expect(refusedAt).toBeGreaterThan(0);
      expect(afterReturn).toBeLessThan(1000);
      expect(b.logs()).not.toContain('internal error');
    } finally {
      adminA.close();
      onB.close();
    }
  });
});
