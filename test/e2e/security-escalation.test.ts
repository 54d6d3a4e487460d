// End-to-end escalation attacks (issue 17) against a real daemon over real mTLS:
// lifting a deny three ways, locking the bootstrap admin out with deny `*` (also across
// a restart), a restricted key minting a wider one, a rotate-only key rotating a
// sibling, and a pool-scoped key cloning from a template pool outside its scope.
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { durationFromMs, timestampMs } from '@bufbuild/protobuf/wkt';
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TypedClient } from '../../src/client/client.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { MigrationService } from '../../src/gen/debvisor/v1/migration_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { ensureDevPki } from '../../src/pki/index.js';
import { ctlOn } from '../support/ctl.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { auditOf, codeOf, issueClientFor, rejection, traceIdOf } from '../support/security.js';

type MethodsOf<T> = T extends GenService<infer S> ? S : never;
type Access = TypedClient<MethodsOf<typeof AccessService>>;

const ADMIN = 'spiffe://debvisor/admin/admin';
const ROLE_ADMIN = 'spiffe://debvisor/escalation/role-admin';
const OPERATOR = 'spiffe://debvisor/escalation/operator';
const CI_OPS = 'spiffe://debvisor/escalation/ci-ops';
const T = { timeoutMs: 10_000 };
const HOUR = 3_600_000;
const bearer = (token: string) => ({ ...T, metadata: { authorization: `Bearer ${token}` } });
const limits = { rate_limit: { per_role_per_minute: { admin: 100_000, operator: 100_000 }, default_per_minute: 100_000, global_per_minute: 1_000_000 } };


async function denied(call: Promise<unknown>, ...mentions: string[]): Promise<ServiceError> {
  const err = await rejection(call);
  expect(err.code, err.details).toBe(Status.PERMISSION_DENIED);
  for (const text of mentions) expect(err.details).toContain(text);
  return err;
}

/** Every token the suite was shown, to grep the daemon's output and audit for at the end. */
const secrets: string[] = [];
function remember<R extends { secret: string }>(response: R): R {
  secrets.push(response.secret);
  return response;
}

async function expectNoSecretIn(daemon: RunningDaemon): Promise<void> {
  const audit = await readFile(join(daemon.dir, 'audit', 'rpc-audit.log'), 'utf8');
  const output = daemon.logs();
  const leaks: string[] = [];
  for (const token of secrets) {
    const secretPart = token.slice(-43);
    for (const needle of [token, secretPart, createHash('sha256').update(secretPart).digest('hex')]) {
      if (audit.includes(needle)) leaks.push(`audit: ${needle.slice(0, 12)}…`);
      if (output.includes(needle)) leaks.push(`output: ${needle.slice(0, 12)}…`);
    }
  }
  expect(secrets.length).toBeGreaterThan(0);
  expect(leaks).toEqual([]);
}

describe('one daemon, principals with partial rights', () => {
  let daemon: RunningDaemon;
  let admin: Access;
  let roleAdmin: Access;
  let operator: Access;
  let anonymous: Access;
  const closers: { close(): void }[] = [];

  beforeAll(async () => {
    daemon = await startDaemon({ config: limits, readyTimeoutMs: 60_000 });
    admin = await clientFor(AccessService, daemon);
    roleAdmin = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, ROLE_ADMIN));
    operator = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, OPERATOR));
    anonymous = await clientFor(AccessService, daemon, null);
    closers.push(admin, roleAdmin, operator, anonymous);
    // A principal that may write roles and bindings, and is itself under a deny.
    await admin.putRole({ role: { name: 'access-and-vms', permissions: ['access:*', 'vm:*'] } }, T);
    await admin.putRole({ role: { name: 'no-destroy', denyPermissions: ['vm:destroy', 'vm:reboot'] } }, T);
    await admin.bindRole({ principal: ROLE_ADMIN, roleName: 'access-and-vms' }, T);
    await admin.bindRole({ principal: ROLE_ADMIN, roleName: 'no-destroy' }, T);
    await admin.bindRole({ principal: OPERATOR, roleName: 'operator' }, T);
  });

  afterAll(async () => {
    for (const client of closers) client.close();
    await daemon.cleanup();
  });

  async function roleAdminMayDestroy(): Promise<boolean> {
    const vms = await clientFor(VmService, daemon, await issueClientFor(daemon.pki, ROLE_ADMIN));
    try {
      return (await codeOf(vms.destroyVm({ vmName: 'web-1' }, T))).code !== Status.PERMISSION_DENIED;
    } finally {
      vms.close();
    }
  }

  async function noDestroyRole() {
    return (await admin.listRoles({}, T)).roles.find((r) => r.name === 'no-destroy');
  }

  describe('lifting a deny counts as granting what it denied', () => {
    it('the principal is under the deny to begin with', async () => {
      expect(await roleAdminMayDestroy()).toBe(false);
    });

    it('writing the role with an empty deny list is refused, naming the permission', async () => {
      await denied(roleAdmin.putRole({ role: { name: 'no-destroy', denyPermissions: [] } }, T), 'role.deny_permissions', 'lifting a deny', 'vm:destroy', 'vm:reboot');
      expect((await noDestroyRole())?.denyPermissions).toEqual(['vm:destroy', 'vm:reboot']);
    });

    it('narrowing the deny is refused for what it no longer denies', async () => {
      const err = await denied(roleAdmin.putRole({ role: { name: 'no-destroy', denyPermissions: ['vm:reboot'] } }, T), 'vm:destroy');
      expect(err.details).not.toContain('vm:reboot');
      expect((await noDestroyRole())?.denyPermissions).toEqual(['vm:destroy', 'vm:reboot']);
    });

    it('unbinding itself from the role is refused', async () => {
      await denied(roleAdmin.unbindRole({ principal: ROLE_ADMIN, roleName: 'no-destroy' }, T), 'role_name', 'vm:destroy');
      expect(await roleAdminMayDestroy()).toBe(false);
    });

    it('deleting the role is refused', async () => {
      await denied(roleAdmin.deleteRole({ roleName: 'no-destroy' }, T), 'role_name', 'vm:destroy');
      expect(await noDestroyRole()).toBeDefined();
      expect(await roleAdminMayDestroy()).toBe(false);
    });

    it('changing the role without touching its deny still works for the principal', async () => {
      await roleAdmin.putRole({ role: { name: 'no-destroy', description: 'kept', denyPermissions: ['vm:destroy', 'vm:reboot'] } }, T);
      expect((await noDestroyRole())?.description).toBe('kept');
    });

    it('the bootstrap admin, who holds those permissions, may lift it', async () => {
      await admin.putRole({ role: { name: 'lift-me', denyPermissions: ['vm:destroy'] } }, T);
      await admin.putRole({ role: { name: 'lift-me', denyPermissions: [] } }, T);
      await admin.deleteRole({ roleName: 'lift-me' }, T);
    });
  });

  describe('deny `*` on the bootstrap admin', () => {
    it('a principal cannot write a role denying what it does not hold', async () => {
      await denied(roleAdmin.putRole({ role: { name: 'lockout', denyPermissions: ['*'] } }, T), 'cannot deny permissions you do not hold', '*');
      await denied(roleAdmin.putRole({ role: { name: 'lockout', denyPermissions: ['storage:*'] } }, T), 'storage:*');
    });

    it('nor bind one that does', async () => {
      await admin.putRole({ role: { name: 'lockout', denyPermissions: ['*'] } }, T);
      await denied(roleAdmin.bindRole({ principal: ADMIN, roleName: 'lockout' }, T), 'cannot deny permissions you do not hold', '*');
    });

    it('and a bootstrap admin under deny `*` is still allowed everything', async () => {
      await admin.bindRole({ principal: ADMIN, roleName: 'lockout' }, T);
      expect((await admin.whoAmI({}, T)).roles).toContain('lockout');
      expect((await admin.listRoles({}, T)).roles.length).toBeGreaterThan(5);
      await admin.unbindRole({ principal: ADMIN, roleName: 'lockout' }, T);
      expect((await admin.whoAmI({}, T)).roles).not.toContain('lockout');
    });
  });

  describe('a key makes only keys no wider than itself', () => {
    let restricted: { secret: string; expireMs: number };

    beforeAll(async () => {
      const created = remember(
        await operator.createApiKey(
          {
            description: 'ci: pool ci-*, loopback, one hour',
            permissions: ['storage:*', 'access:apikey:create'],
            resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-*' }],
            allowedCidrs: ['127.0.0.0/8'],
            ttl: durationFromMs(HOUR),
          },
          T,
        ),
      );
      restricted = { secret: created.secret, expireMs: timestampMs(created.apiKey!.expireTime!) };
    });

    it('the reported attack: no globs, no source restriction, 365 days', async () => {
      const err = await denied(
        anonymous.createApiKey({ description: 'wide', permissions: ['storage:*'], ttl: durationFromMs(365 * 24 * HOUR) }, bearer(restricted.secret)),
        'no wider than it',
      );
      for (const field of ['resource_globs', 'allowed_cidrs', 'ttl']) expect(err.details).toContain(field);
    });

    it.each([
      ['a glob outside its own', { resourceGlobs: [{ kind: ResourceKind.POOL, glob: '*' }] }, 'resource_globs: pool=* is not within pool=ci-*'],
      ['a glob that only starts alike', { resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'c*' }] }, 'pool=c* is not within'],
      ['a glob of another kind', { resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-1' }, { kind: ResourceKind.VM, glob: '*' }] }, 'vm=* is not within'],
      ['no source restriction', { allowedCidrs: [] }, 'allowed_cidrs: required'],
      ['a wider network', { allowedCidrs: ['0.0.0.0/0'] }, 'allowed_cidrs: 0.0.0.0/0 is not within 127.0.0.0/8'],
      ['a later expiry', { ttl: durationFromMs(2 * HOUR) }, 'ttl: must end by'],
    ])('refuses %s', async (_what, change, message) => {
      const request = { description: 'wider', permissions: ['storage:snapshot:*'], resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-1*' }], allowedCidrs: ['127.0.0.1/32'], ...change };
      await denied(anonymous.createApiKey(request, bearer(restricted.secret)), message);
    });

    it('refuses permissions beyond its own', async () => {
      const request = { description: 'wider', permissions: ['vm:list'], resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-1*' }], allowedCidrs: ['127.0.0.1/32'] };
      await denied(anonymous.createApiKey(request, bearer(restricted.secret)), 'cannot grant permissions you do not hold: vm:list');
    });

    it('makes a narrower key, which ends no later than itself when no ttl is asked for', async () => {
      const narrow = remember(
        await anonymous.createApiKey(
          { description: 'narrow', permissions: ['storage:snapshot:*'], resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-1*' }], allowedCidrs: ['127.0.0.1/32'] },
          bearer(restricted.secret),
        ),
      );
      expect(timestampMs(narrow.apiKey!.expireTime!)).toBeLessThanOrEqual(restricted.expireMs);
      expect(narrow.apiKey?.resourceGlobs.map((g) => g.glob)).toEqual(['ci-1*']);
      // And the narrower key is held to ci-1*, not the wider ci-*.
      const storage = await clientFor(StorageService, daemon, null);
      closers.push(storage);
      await denied(storage.createSnapshot({ dataset: { pool: 'ci-2', name: 'disk0' }, snapshotName: 's' }, bearer(narrow.secret)), 'not scoped to pool "ci-2"');
    });
  });

  describe('rotate and revoke through a key act on that key only', () => {
    it('a rotate-only key cannot rotate (or revoke) a sibling of the same owner', async () => {
      const sibling = remember(await operator.createApiKey({ description: 'wide sibling', permissions: ['storage:*', 'vm:*'] }, T));
      const rotator = remember(await operator.createApiKey({ description: 'rotate only', permissions: ['access:apikey:rotate', 'access:apikey:revoke'], ttl: durationFromMs(HOUR) }, T));
      await denied(anonymous.rotateApiKey({ keyId: sibling.apiKey!.keyId }, bearer(rotator.secret)), 'an API key may rotate only itself');
      await denied(anonymous.revokeApiKey({ keyId: sibling.apiKey!.keyId }, bearer(rotator.secret)), 'an API key may revoke only itself');
      // The same answer for an id that does not exist: nothing to probe.
      await denied(anonymous.rotateApiKey({ keyId: '0000000000000000' }, bearer(rotator.secret)), 'an API key may rotate only itself');
      const keys = (await operator.listApiKeys({}, T)).apiKeys;
      expect(keys.find((k) => k.keyId === sibling.apiKey!.keyId)?.revokeTime).toBeUndefined();

      // Itself it may rotate; the new key ends no later than the old one.
      const rotated = remember(await anonymous.rotateApiKey({ keyId: rotator.apiKey!.keyId }, bearer(rotator.secret)));
      expect(timestampMs(rotated.apiKey!.expireTime!)).toBeLessThanOrEqual(timestampMs(rotator.apiKey!.expireTime!));
    });

    it('a key holding access:apikey:* without resource globs administers keys; with globs it does not', async () => {
      const sibling = remember(await admin.createApiKey({ description: 'admin sibling', permissions: ['vm:list'] }, T));
      const scopedAdmin = remember(
        await admin.createApiKey({ description: 'scoped key admin', permissions: ['access:apikey:*'], resourceGlobs: [{ kind: ResourceKind.API_KEY, glob: '*' }] }, T),
      );
      await denied(anonymous.rotateApiKey({ keyId: sibling.apiKey!.keyId }, bearer(scopedAdmin.secret)), 'an API key may rotate only itself');
      const keyAdmin = remember(await admin.createApiKey({ description: 'key admin', permissions: ['access:apikey:*'] }, T));
      remember(await anonymous.rotateApiKey({ keyId: sibling.apiKey!.keyId }, bearer(keyAdmin.secret)));
    });
  });

  describe('RPCs naming several resources: a scoped key must cover each', () => {
    it('CloneRbdFromTemplate checks the template pool as well as the target pool', async () => {
      const key = remember(
        await operator.createApiKey({ description: 'ci clones', permissions: ['storage:*'], resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-*' }] }, T),
      );
      const storage = await clientFor(StorageService, daemon, null);
      closers.push(storage);
      const clone = (templatePool: string) =>
        storage.cloneRbdFromTemplate({ templatePool, templateImage: 'base', templateSnapshot: 'gold', targetPool: 'ci-1', targetImage: 'job-42' }, bearer(key.secret));
      const err = await denied(clone('prod'), 'this API key is not scoped to pool "prod"');
      expect(await auditOf(daemon, 'AUTHZ_DENIED', traceIdOf(err))).toMatchObject({ reason: 'outside_key_scope', object: 'pool:prod' });
      await denied(clone(''), 'must name the pool explicitly');
      // Within scope, RBAC lets it through (no Ceph here: the handler refuses it).
      expect((await codeOf(clone('ci-templates'))).code).not.toBe(Status.PERMISSION_DENIED);
    });

    it('MigrateVM checks the source and target nodes as well as the VM', async () => {
      const key = remember(
        await operator.createApiKey(
          {
            description: 'ci migrations',
            permissions: ['migration:*'],
            resourceGlobs: [
              { kind: ResourceKind.VM, glob: 'ci-*' },
              { kind: ResourceKind.NODE, glob: 'ci-node-*' },
            ],
          },
          T,
        ),
      );
      const migration = await clientFor(MigrationService, daemon, null);
      closers.push(migration);
      const migrate = (sourceNode: string, targetNode: string) => migration.migrateVM({ vmName: 'ci-vm', sourceNode, targetNode }, bearer(key.secret));
      await denied(migrate('prod-node-1', 'ci-node-2'), 'not scoped to node "prod-node-1"');
      await denied(migrate('ci-node-1', 'prod-node-2'), 'not scoped to node "prod-node-2"');
      await denied(migration.failoverVM({ vmName: 'ci-vm', failedNode: 'ci-node-1', targetNode: 'prod-1' }, bearer(key.secret)), 'not scoped to node "prod-1"');
      expect((await codeOf(migrate('ci-node-1', 'ci-node-2'))).code).not.toBe(Status.PERMISSION_DENIED);
    });
  });

  describe('scoped roles: resource globs on a role (issue 21)', () => {
    const ciVms = { name: 'ci-vms', description: 'CI VMs only', permissions: ['vm:*'], resourceGlobs: [{ kind: ResourceKind.VM, glob: 'ci-*' }] };

    it('PutRole stores the globs and ListRoles returns them; roles without any have none', async () => {
      const put = await admin.putRole({ role: ciVms }, T);
      expect(put.role?.resourceGlobs).toEqual([expect.objectContaining({ kind: ResourceKind.VM, glob: 'ci-*' })]);
      const roles = (await admin.listRoles({}, T)).roles;
      expect(roles.find((r) => r.name === 'ci-vms')?.resourceGlobs.map((g) => [g.kind, g.glob])).toEqual([[ResourceKind.VM, 'ci-*']]);
      expect(roles.find((r) => r.name === 'no-destroy')?.resourceGlobs).toEqual([]);
      expect(roles.find((r) => r.name === 'admin')?.resourceGlobs).toEqual([]);
    });

    it('refuses a glob that is not one, or names no kind, naming the field', async () => {
      const bad = async (resourceGlobs: { kind: ResourceKind; glob: string }[], field: string) => {
        const err = await rejection(admin.putRole({ role: { name: 'bad-scope', permissions: ['vm:list'], resourceGlobs } }, T));
        expect(err.code, err.details).toBe(Status.INVALID_ARGUMENT);
        expect(err.details).toContain(field);
      };
      await bad([{ kind: ResourceKind.USER, glob: 'a b' }], 'role.resource_globs[0].glob');
      await bad([{ kind: ResourceKind.USER, glob: 'ci-*' }, { kind: ResourceKind.USER, glob: '' }], 'role.resource_globs[1].glob');
      await bad([{ kind: ResourceKind.UNSPECIFIED, glob: 'ci-*' }], 'role.resource_globs[0].kind');
      expect((await admin.listRoles({}, T)).roles.some((r) => r.name === 'bad-scope')).toBe(false);
    });

    it('globs are no way around the escalation check on the permissions', async () => {
      const scoped = { name: 'ci-storage', permissions: ['storage:*'], resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-*' }] };
      await denied(roleAdmin.putRole({ role: scoped }, T), 'role.permissions', 'storage:*');
      // Nor is dropping the globs of a role whose permissions the writer does not hold.
      await admin.putRole({ role: scoped }, T);
      await denied(roleAdmin.putRole({ role: { ...scoped, resourceGlobs: [] } }, T), 'role.permissions', 'storage:*');
      expect((await admin.listRoles({}, T)).roles.find((r) => r.name === 'ci-storage')?.resourceGlobs).toHaveLength(1);
    });

    it('its holder acts only within the globs, and cannot hand its grants on', async () => {
      await admin.putRole({ role: ciVms }, T);
      await admin.bindRole({ principal: CI_OPS, roleName: 'ci-vms' }, T);
      await admin.bindRole({ principal: CI_OPS, roleName: 'developer' }, T); // own API keys; vm:list unscoped
      const pem = await issueClientFor(daemon.pki, CI_OPS);
      const vms = await clientFor(VmService, daemon, pem);
      const access = await clientFor(AccessService, daemon, pem);
      closers.push(vms, access);
      const err = await denied(vms.destroyVm({ vmName: 'web-1' }, T), 'requires vm:destroy');
      expect(await auditOf(daemon, 'AUTHZ_DENIED', traceIdOf(err))).toMatchObject({ reason: 'outside_role_scope', object: 'vm:web-1' });
      expect((await codeOf(vms.destroyVm({ vmName: 'ci-1' }, T))).code).not.toBe(Status.PERMISSION_DENIED);
      // Not in a key, a role or a binding: only its unscoped roles' grants count.
      await denied(access.createApiKey({ description: 'wider', permissions: ['vm:destroy'] }, T), 'cannot grant permissions you do not hold: vm:destroy');
      remember(await access.createApiKey({ description: 'from developer', permissions: ['vm:list'] }, T));
    });

    it('debvisorctl role put --resource-glob writes them; role get and role list show them', async () => {
      const put = await ctlOn(daemon, 'role', 'put', 'ci-panel', '-p', 'vm:list', '--resource-glob', 'user=ci-*', '--resource-glob', 'vm=ci-?');
      expect(put.code, put.stderr).toBe(0);
      const get = await ctlOn(daemon, 'role', 'get', 'ci-panel');
      expect(get.code, get.stderr).toBe(0);
      expect(get.stdout).toMatch(/scope:\s+user=ci-\* vm=ci-\?/);
      const json = await ctlOn(daemon, '-o', 'json', 'role', 'get', 'ci-panel');
      expect(JSON.parse(json.stdout)).toMatchObject({ name: 'ci-panel', resourceGlobs: [{ kind: 'RESOURCE_KIND_USER', glob: 'ci-*' }, { kind: 'RESOURCE_KIND_VM', glob: 'ci-?' }] });
      const list = await ctlOn(daemon, '-o', 'wide', 'role', 'list');
      expect(list.stdout).toContain('user=ci-*');
      const bad = await ctlOn(daemon, 'role', 'put', 'ci-panel', '-p', 'vm:list', '--resource-glob', 'bogus=x');
      expect(bad.code).not.toBe(0);
      expect(bad.stderr).toContain('expected KIND=GLOB');
      const missing = await ctlOn(daemon, 'role', 'get', 'no-such-role');
      expect(missing.code).not.toBe(0);
    });
  });

  it('no secret the suite created is in the daemon output or the audit log', async () => {
    await expectNoSecretIn(daemon);
  });
});

describe('a bootstrap admin under deny `*`, across a restart', () => {
  let pkiDir: string;
  let stateDir: string;
  let daemon: RunningDaemon | undefined;

  beforeAll(async () => {
    pkiDir = await mkdtemp(join(tmpdir(), 'rpcd-escalation-pki-'));
    stateDir = await mkdtemp(join(tmpdir(), 'rpcd-escalation-state-'));
    await ensureDevPki(pkiDir);
  });

  afterAll(async () => {
    await daemon?.cleanup();
    await rm(pkiDir, { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
  });

  const start = () => startDaemon({ pkiDir, readyTimeoutMs: 60_000, config: { ...limits, store: { embedded: { dir: stateDir } } } });

  it('is never locked out, and can undo the binding after the restart', async () => {
    daemon = await start();
    let admin = await clientFor(AccessService, daemon);
    try {
      await admin.putRole({ role: { name: 'lockout', denyPermissions: ['*'] } }, T);
      await admin.bindRole({ principal: ADMIN, roleName: 'lockout' }, T);
      expect((await admin.whoAmI({}, T)).roles).toEqual(['admin', 'lockout']);
      await admin.putRole({ role: { name: 'ci-panel', permissions: ['vm:list'], resourceGlobs: [{ kind: ResourceKind.USER, glob: 'ci-*' }] } }, T);
    } finally {
      admin.close();
    }
    await daemon.stop();
    await daemon.cleanup();

    daemon = await start();
    admin = await clientFor(AccessService, daemon);
    try {
      expect((await admin.whoAmI({}, T)).roles).toEqual(['admin', 'lockout']);
      // A scoped role's globs come back from the store.
      const panel = (await admin.listRoles({}, T)).roles.find((r) => r.name === 'ci-panel');
      expect(panel?.resourceGlobs.map((g) => [g.kind, g.glob])).toEqual([[ResourceKind.USER, 'ci-*']]);
      const key = remember(await admin.createApiKey({ description: 'admin key under deny', permissions: ['access:*'] }, T));
      expect((await admin.listApiKeys({}, T)).apiKeys.some((k) => k.keyId === key.apiKey!.keyId)).toBe(true);
      expect(await admin.unbindRole({ principal: ADMIN, roleName: 'lockout' }, T)).toEqual(expect.objectContaining({ removed: true }));
      await admin.deleteRole({ roleName: 'lockout' }, T);
      expect((await admin.whoAmI({}, T)).roles).toEqual(['admin']);
    } finally {
      admin.close();
    }
    await expectNoSecretIn(daemon);
  });
});
