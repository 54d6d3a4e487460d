// Decisions: deny wins, API keys get the intersection with their owner's current
// roles, resource globs scope keys, and keys cannot be issued beyond the issuer.
import { describe, expect, it } from 'vitest';
import { create, getOption, type DescMethod, type Message } from '@bufbuild/protobuf';
import { API_SERVICES } from '../../src/services/registry.js';
import { OWNER_FILTERED_KINDS, authorize, canGrant, globMatches, isValidResourceGlob, keyScopeShows, type ResourceGlob } from '../../src/authz/decide.js';
import { compilePolicy, RESOURCE_KIND_NAMES, resourceKindFromName, resourceKindName, type CompiledPolicy } from '../../src/rpc/policy.js';
import { rpc_policy } from '../../src/gen/debvisor/v1/options_pb.js';

const policy = (m: DescMethod): CompiledPolicy => compilePolicy(m)!;
const resourcesOf = (m: DescMethod, request: Message) => policy(m).resourcesOf(request);
const resourceOf = (m: DescMethod, request: Message) => policy(m).resourceOf(request);
import { BUILTIN_ROLES, type Role } from '../../src/authz/roles.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageService, CreateSnapshotRequestSchema, ListVolumesRequestSchema, CloneRbdFromTemplateRequestSchema } from '../../src/gen/debvisor/v1/storage_pb.js';
import { VmService, StartVmRequestSchema } from '../../src/gen/debvisor/v1/vm_pb.js';
import { AccessService, BindRoleRequestSchema, PutRoleRequestSchema, WhoAmIRequestSchema, CreateApiKeyRequestSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { MigrationService, MigrateVMRequestSchema } from '../../src/gen/debvisor/v1/migration_pb.js';

const role = (name: string, permissions: string[], deny: string[] = [], resourceGlobs: ResourceGlob[] = []): Role => ({ name, description: '', permissions, deny, resourceGlobs, builtin: false });
const builtin = (name: string) => BUILTIN_ROLES.get(name)!;
const method = (service: { methods: DescMethod[] }, name: string) => service.methods.find((m) => m.name === name)!;

describe('authorize: roles', () => {
  it('allows what a role grants and refuses the rest', () => {
    expect(authorize({ roles: [builtin('developer')], required: 'storage:snapshot:create' })).toEqual({ allowed: true });
    expect(authorize({ roles: [builtin('developer')], required: 'storage:snapshot:delete' })).toEqual({
      allowed: false,
      missing: 'storage:snapshot:delete',
      reason: 'not_granted',
    });
    expect(authorize({ roles: [], required: 'vm:list' }).allowed).toBe(false);
  });

  it('grants are the union over roles', () => {
    const roles = [builtin('monitor'), role('snapper', ['storage:snapshot:*'])];
    expect(authorize({ roles, required: 'node:heartbeat' }).allowed).toBe(true);
    expect(authorize({ roles, required: 'storage:snapshot:prune' }).allowed).toBe(true);
    expect(authorize({ roles, required: 'storage:volume:delete' }).allowed).toBe(false);
  });

  it('a deny in any role wins over any grant, even admin’s', () => {
    const noDestroy = role('no-destroy', [], ['vm:destroy', 'storage:*:delete']);
    const roles = [builtin('admin'), noDestroy];
    expect(authorize({ roles, required: 'vm:destroy' })).toEqual({ allowed: false, missing: 'vm:destroy', reason: 'denied_by_role' });
    expect(authorize({ roles, required: 'storage:volume:delete' }).allowed).toBe(false);
    expect(authorize({ roles, required: 'storage:snapshot:delete' }).allowed).toBe(false);
    expect(authorize({ roles, required: 'vm:start' }).allowed).toBe(true);
    expect(authorize({ roles, required: 'access:role:put' }).allowed).toBe(true);
    // deny within the same role
    const selfLimited = role('ops-no-migrate', ['*'], ['migration:*']);
    expect(authorize({ roles: [selfLimited], required: 'migration:execute' }).allowed).toBe(false);
    expect(authorize({ roles: [selfLimited], required: 'node:list' }).allowed).toBe(true);
  });

  it('a `*:list` grant is not everything', () => {
    const lister = role('lister', ['*:list']);
    expect(authorize({ roles: [lister], required: 'node:list' }).allowed).toBe(true);
    expect(authorize({ roles: [lister], required: 'storage:snapshot:list' }).allowed).toBe(false);
    expect(authorize({ roles: [lister], required: 'vm:destroy' }).allowed).toBe(false);
  });
});

describe('authorize: API keys', () => {
  const key = (permissions: string[], resourceGlobs: ResourceGlob[] = []) => ({ permissions, resourceGlobs });

  it('effective rights are the intersection of the key and its owner’s roles', () => {
    const apiKey = key(['storage:snapshot:*', 'vm:destroy']);
    const owner = [builtin('developer')];
    expect(authorize({ roles: owner, required: 'storage:snapshot:create', apiKey }).allowed).toBe(true);
    // the key has it, the owner does not
    expect(authorize({ roles: owner, required: 'vm:destroy', apiKey })).toMatchObject({ allowed: false, reason: 'not_granted' });
    expect(authorize({ roles: owner, required: 'storage:snapshot:delete', apiKey }).allowed).toBe(false);
    // the owner has it, the key does not
    expect(authorize({ roles: owner, required: 'node:list', apiKey })).toMatchObject({ allowed: false, reason: 'not_granted_to_key' });
  });

  it('a key loses rights when its owner loses a role, and regains none the owner did not have', () => {
    const apiKey = key(['vm:*', 'node:list']);
    const before = [builtin('operator')];
    expect(authorize({ roles: before, required: 'vm:start', apiKey }).allowed).toBe(true);
    const after = [builtin('viewer')]; // operator unbound, viewer kept
    expect(authorize({ roles: after, required: 'vm:start', apiKey }).allowed).toBe(false);
    expect(authorize({ roles: after, required: 'vm:get', apiKey }).allowed).toBe(true);
    expect(authorize({ roles: [], required: 'node:list', apiKey }).allowed).toBe(false);
    // a deny added to the owner applies to the key too
    expect(authorize({ roles: [...before, role('d', [], ['vm:start'])], required: 'vm:start', apiKey }).allowed).toBe(false);
  });

  it('resource globs restrict a scoped key to matching targets of the right kind', () => {
    const apiKey = key(['storage:*', 'vm:*'], [{ kind: 'pool', glob: 'ci-*' }]);
    const roles = [builtin('operator')];
    const at = (kind: string, name: string) => authorize({ roles, required: 'storage:snapshot:create', apiKey, resources: [{ kind, name }] });
    expect(at('pool', 'ci-42').allowed).toBe(true);
    expect(at('pool', 'prod-1')).toEqual({ allowed: false, missing: 'storage:snapshot:create', reason: 'outside_key_scope', resource: { kind: 'pool', name: 'prod-1' } });
    expect(at('pool', 'ci-1/x').allowed).toBe(false);
    expect(at('pool', 'xci-1').allowed).toBe(false);
    // a target of a kind the key has no glob for is out of scope
    expect(authorize({ roles, required: 'vm:start', apiKey, resources: [{ kind: 'vm', name: 'ci-42' }] }).allowed).toBe(false);
    // no target (lists, the caller itself): globs do not restrict; handlers filter
    expect(authorize({ roles, required: 'storage:volume:list', apiKey }).allowed).toBe(true);
    // an unscoped key is not restricted
    expect(authorize({ roles, required: 'vm:start', apiKey: key(['vm:*']), resources: [{ kind: 'vm', name: 'prod-db' }] }).allowed).toBe(true);
    // several globs: any may match
    const multi = key(['vm:*'], [{ kind: 'vm', glob: 'web-?' }, { kind: 'vm', glob: 'ci-*' }]);
    expect(authorize({ roles, required: 'vm:start', apiKey: multi, resources: [{ kind: 'vm', name: 'web-1' }] }).allowed).toBe(true);
    expect(authorize({ roles, required: 'vm:start', apiKey: multi, resources: [{ kind: 'vm', name: 'web-10' }] }).allowed).toBe(false);
    expect(authorize({ roles, required: 'vm:start', apiKey: multi, resources: [{ kind: 'vm', name: 'ci-7' }] }).allowed).toBe(true);
  });

  it('operations are owner-filtered: a pool-scoped key can still wait on its operations, unless it scopes operations too', () => {
    expect(OWNER_FILTERED_KINDS.has('operation')).toBe(true);
    const roles = [builtin('developer')];
    const poolOnly = key(['storage:clone:*', 'operation:wait'], [{ kind: 'pool', glob: 'ci-*' }]);
    expect(authorize({ roles, required: 'operation:wait', apiKey: poolOnly, resources: [{ kind: 'operation', name: 'op-1' }] }).allowed).toBe(true);
    const opScoped = key(['operation:wait'], [{ kind: 'operation', glob: 'ci-*' }]);
    expect(authorize({ roles, required: 'operation:wait', apiKey: opScoped, resources: [{ kind: 'operation', name: 'op-1' }] }).allowed).toBe(false);
    expect(authorize({ roles, required: 'operation:wait', apiKey: opScoped, resources: [{ kind: 'operation', name: 'ci-1' }] }).allowed).toBe(true);
  });
});

describe('authorize: scoped roles (resource globs on a role)', () => {
  const user = (name: string) => ({ kind: 'user', name });
  const ciPanel = role('ci-panel', ['access:impersonate', 'vm:*'], [], [{ kind: 'user', glob: 'ci-*' }]);
  const impersonate = (roles: readonly Role[], name: string) => authorize({ roles, required: 'access:impersonate', resources: [user(name)] });

  it('grants only on resources of a listed kind that one of its globs matches', () => {
    expect(impersonate([ciPanel], 'ci-bob')).toEqual({ allowed: true });
    expect(impersonate([ciPanel], 'alice')).toEqual({ allowed: false, missing: 'access:impersonate', reason: 'outside_role_scope', resource: user('alice') });
    expect(impersonate([ciPanel], 'ci-1/x').allowed).toBe(false);
    expect(impersonate([ciPanel], '').allowed).toBe(false);
    // what the role does not grant at all is not granted, whatever the scope
    expect(authorize({ roles: [ciPanel], required: 'node:list', resources: [user('ci-bob')] })).toEqual({ allowed: false, missing: 'node:list', reason: 'not_granted' });
    // several globs of the kind: any may match
    const two = role('two', ['access:impersonate'], [], [{ kind: 'user', glob: 'ci-*' }, { kind: 'user', glob: 'qa-?' }]);
    expect(impersonate([two], 'qa-1').allowed).toBe(true);
    expect(impersonate([two], 'qa-10').allowed).toBe(false);
  });

  it('does not restrict kinds it has no globs for, nor calls that name no resource', () => {
    expect(authorize({ roles: [ciPanel], required: 'vm:start', resources: [{ kind: 'vm', name: 'prod-db' }] })).toEqual({ allowed: true });
    expect(authorize({ roles: [ciPanel], required: 'vm:list', resources: [] })).toEqual({ allowed: true });
    expect(authorize({ roles: [ciPanel], required: 'access:impersonate' })).toEqual({ allowed: true });
    // every named resource of a listed kind must match: a clone from a pool outside the scope is refused
    const ciPools = role('ci-pools', ['storage:clone:*'], [], [{ kind: 'pool', glob: 'ci-*' }]);
    const clone = (templatePool: string) =>
      authorize({ roles: [ciPools], required: 'storage:clone:create', resources: resourcesOf(method(StorageService, 'CloneRbdFromTemplate'), create(CloneRbdFromTemplateRequestSchema, { targetPool: 'ci-1', templatePool })) });
    expect(clone('ci-templates')).toEqual({ allowed: true });
    expect(clone('prod')).toEqual({ allowed: false, missing: 'storage:clone:create', reason: 'outside_role_scope', resource: { kind: 'pool', name: 'prod' } });
    expect(clone('')).toMatchObject({ allowed: false, reason: 'outside_role_scope' });
  });

  it('never scopes a deny: a scoped role’s deny applies to every resource and over every role', () => {
    const scopedDeny = role('no-destroy-ci', ['vm:list'], ['vm:destroy'], [{ kind: 'vm', glob: 'ci-*' }]);
    const roles = [builtin('admin'), scopedDeny];
    expect(authorize({ roles, required: 'vm:destroy', resources: [{ kind: 'vm', name: 'prod-db' }] })).toEqual({ allowed: false, missing: 'vm:destroy', reason: 'denied_by_role' });
    expect(authorize({ roles, required: 'vm:destroy', resources: [{ kind: 'vm', name: 'ci-1' }] })).toMatchObject({ reason: 'denied_by_role' });
    expect(authorize({ roles, required: 'vm:destroy' })).toMatchObject({ reason: 'denied_by_role' });
    expect(authorize({ roles, required: 'vm:start', resources: [{ kind: 'vm', name: 'prod-db' }] })).toEqual({ allowed: true });
    // a bootstrap admin is under no deny, and a scope still bounds what a scoped role grants it
    expect(authorize({ roles, required: 'vm:destroy', exemptFromDeny: true, resources: [{ kind: 'vm', name: 'prod-db' }] })).toEqual({ allowed: true });
    expect(impersonate([ciPanel], 'alice').allowed).toBe(false);
    expect(authorize({ roles: [ciPanel], required: 'access:impersonate', exemptFromDeny: true, resources: [user('alice')] })).toMatchObject({ reason: 'outside_role_scope' });
  });

  it('a grant is the union over roles: an unscoped role with the permission grants it everywhere', () => {
    const anyone = role('impersonate-anyone', ['access:impersonate']);
    expect(impersonate([ciPanel, anyone], 'alice')).toEqual({ allowed: true });
    expect(impersonate([anyone, ciPanel], 'alice')).toEqual({ allowed: true });
    // an unscoped role without the permission adds nothing to it
    expect(impersonate([ciPanel, builtin('operator')], 'alice')).toMatchObject({ allowed: false, reason: 'outside_role_scope' });
    expect(authorize({ roles: [ciPanel, builtin('operator')], required: 'storage:volume:list', resources: [user('alice')] })).toEqual({ allowed: true });
    // two scoped roles: each grants within its own scope
    const qaPanel = role('qa-panel', ['access:impersonate'], [], [{ kind: 'user', glob: 'qa-*' }]);
    expect(impersonate([ciPanel, qaPanel], 'ci-1').allowed).toBe(true);
    expect(impersonate([ciPanel, qaPanel], 'qa-1').allowed).toBe(true);
    expect(impersonate([ciPanel, qaPanel], 'prod-1').allowed).toBe(false);
  });

  it('an API key of a scoped role’s holder is bounded by both scopes', () => {
    const apiKey = { permissions: ['access:impersonate'], resourceGlobs: [{ kind: 'user', glob: 'ci-a*' }] };
    expect(authorize({ roles: [ciPanel], required: 'access:impersonate', apiKey, resources: [user('ci-abc')] })).toEqual({ allowed: true });
    expect(authorize({ roles: [ciPanel], required: 'access:impersonate', apiKey, resources: [user('ci-b')] })).toMatchObject({ reason: 'outside_key_scope' });
    expect(authorize({ roles: [ciPanel], required: 'access:impersonate', apiKey, resources: [user('alice')] })).toMatchObject({ reason: 'outside_role_scope' });
  });

  it('decisions of a list with a scoped role are not remembered by permission alone (either order, either deny mode)', () => {
    // One frozen list, as AccessState hands out, so the per-list cache is in play.
    for (const exemptFromDeny of [false, true]) {
      const roles = Object.freeze([ciPanel, builtin('viewer')]);
      const decide = (name: string) => authorize({ roles, required: 'access:impersonate', exemptFromDeny, resources: [user(name)] }).allowed;
      expect([decide('ci-1'), decide('alice'), decide('ci-2'), decide('alice')]).toEqual([true, false, true, false]);
      const other = Object.freeze([ciPanel, builtin('viewer')]);
      const decideOther = (name: string) => authorize({ roles: other, required: 'access:impersonate', exemptFromDeny, resources: [user(name)] }).allowed;
      expect([decideOther('alice'), decideOther('ci-1'), decideOther('alice')]).toEqual([false, true, false]);
      // no resources, then resources: the permissive answer is not kept either
      const third = Object.freeze([ciPanel]);
      expect(authorize({ roles: third, required: 'access:impersonate', exemptFromDeny }).allowed).toBe(true);
      expect(authorize({ roles: third, required: 'access:impersonate', exemptFromDeny, resources: [user('alice')] }).allowed).toBe(false);
    }
    // an unscoped list keeps one remembered decision per permission, whatever the resources
    const unscoped = Object.freeze([builtin('operator')]);
    const first = authorize({ roles: unscoped, required: 'vm:start', resources: [{ kind: 'vm', name: 'a' }] });
    expect(authorize({ roles: unscoped, required: 'vm:start', resources: [{ kind: 'vm', name: 'b' }] })).toBe(first);
  });
});

describe('resource globs', () => {
  it.each([
    ['ci-*', 'ci-42', true],
    ['ci-*', 'ci-', true],
    ['ci-*', 'prod-1', false],
    ['ci-*', 'ci-1/x', false],
    ['*', 'a/b', false],
    ['*', 'anything.at-all', true],
    ['*', '', false],
    ['web-?', 'web-1', true],
    ['web-?', 'web-12', false],
    ['a.b', 'axb', false],
    ['{a,b}', 'a', false], // no braces
    ['[ab]', 'a', false], // no brackets
    ['!(x)', 'y', false], // no extglob
    ['!x', 'y', false], // no negation
    ['**', 'a/b', false], // no globstar
    ['pool/*', 'pool/img', true],
  ])('%s vs %j → %s', (glob, name, expected) => {
    expect(globMatches(glob, name)).toBe(expected);
  });

  it('validates globs a key may carry', () => {
    expect(isValidResourceGlob('ci-*')).toBe(true);
    expect(isValidResourceGlob('web-?')).toBe(true);
    expect(isValidResourceGlob('')).toBe(false);
    expect(isValidResourceGlob('{a,b}')).toBe(false);
    expect(isValidResourceGlob('a b')).toBe(false);
    expect(isValidResourceGlob('x'.repeat(257))).toBe(false);
  });

  it('maps ResourceKind names', () => {
    expect(resourceKindName(ResourceKind.POOL)).toBe('pool');
    expect(resourceKindName(ResourceKind.API_KEY)).toBe('api_key');
    expect(resourceKindName(ResourceKind.UNSPECIFIED)).toBeUndefined();
    expect(resourceKindFromName('vm')).toBe(ResourceKind.VM);
    expect(resourceKindFromName('bogus')).toBeUndefined();
    expect([...RESOURCE_KIND_NAMES.values()].sort()).toEqual(['api_key', 'image', 'network', 'node', 'operation', 'pool', 'principal', 'role', 'user', 'vm', 'volume']);
  });
});

describe('resourcesOf (every resource an RPC names)', () => {
  it('a clone names its target pool and its template pool; an empty template pool is still checked', () => {
    const clone = method(StorageService, 'CloneRbdFromTemplate');
    expect(resourcesOf(clone, create(CloneRbdFromTemplateRequestSchema, { targetPool: 'ci-1', templatePool: 'prod' }))).toEqual([
      { kind: 'pool', name: 'ci-1' },
      { kind: 'pool', name: 'prod' },
    ]);
    expect(resourcesOf(clone, create(CloneRbdFromTemplateRequestSchema, { targetPool: 'ci-1' }))).toEqual([
      { kind: 'pool', name: 'ci-1' },
      { kind: 'pool', name: '' },
    ]);
  });

  it('migrations name their nodes, bindings their role', () => {
    const migrate = method(MigrationService, 'MigrateVM');
    expect(resourcesOf(migrate, create(MigrateVMRequestSchema, { vmName: 'ci-1', sourceNode: 'n1', targetNode: 'n2' }))).toEqual([
      { kind: 'vm', name: 'ci-1' },
      { kind: 'node', name: 'n1' },
      { kind: 'node', name: 'n2' },
    ]);
    expect(resourcesOf(method(AccessService, 'BindRole'), create(BindRoleRequestSchema, { principal: 'p', roleName: 'r' }))).toEqual([
      { kind: 'principal', name: 'p' },
      { kind: 'role', name: 'r' },
    ]);
  });

  it('a scoped key must cover every one of them', () => {
    const roles = [builtin('developer')];
    const apiKey = { permissions: ['storage:clone:*'], resourceGlobs: [{ kind: 'pool', glob: 'ci-*' }] };
    const clone = (templatePool: string) =>
      authorize({ roles, required: 'storage:clone:create', apiKey, resources: resourcesOf(method(StorageService, 'CloneRbdFromTemplate'), create(CloneRbdFromTemplateRequestSchema, { targetPool: 'ci-1', templatePool })) });
    expect(clone('ci-templates')).toEqual({ allowed: true });
    expect(clone('prod')).toEqual({ allowed: false, missing: 'storage:clone:create', reason: 'outside_key_scope', resource: { kind: 'pool', name: 'prod' } });
    expect(clone('')).toMatchObject({ allowed: false, reason: 'outside_key_scope' });
  });
});

describe('bootstrap admins (exemptFromDeny)', () => {
  it('no deny applies to them, but grants still must exist', () => {
    const roles = [builtin('admin'), role('lockout', [], ['*'])];
    expect(authorize({ roles, required: 'access:role:put' })).toMatchObject({ allowed: false, reason: 'denied_by_role' });
    expect(authorize({ roles, required: 'access:role:put', exemptFromDeny: true })).toEqual({ allowed: true });
    expect(authorize({ roles: [role('lockout', [], ['*'])], required: 'vm:list', exemptFromDeny: true }).allowed).toBe(false);
    expect(canGrant(roles, ['vm:*'])).toEqual({ ok: false, excess: ['vm:*'] });
    expect(canGrant(roles, ['vm:*'], undefined, true)).toEqual({ ok: true });
  });
});

describe('resourceOf', () => {
  it('reads dotted resource fields from requests', () => {
    const createSnapshot = method(StorageService, 'CreateSnapshot');
    const req = create(CreateSnapshotRequestSchema, { dataset: { pool: 'ci-pool', name: 'vol1' }, snapshotName: 's1' });
    expect(resourceOf(createSnapshot, req)).toEqual({ kind: 'pool', name: 'ci-pool' });
    expect(resourceOf(createSnapshot, create(CreateSnapshotRequestSchema, {}))).toBeUndefined(); // unset parent
    expect(resourceOf(method(VmService, 'StartVm'), create(StartVmRequestSchema, { vmName: 'web-1' }))).toEqual({ kind: 'vm', name: 'web-1' });
    expect(resourceOf(method(AccessService, 'PutRole'), create(PutRoleRequestSchema, { role: { name: 'ci' } }))).toEqual({ kind: 'role', name: 'ci' });
    expect(resourceOf(method(StorageService, 'CloneRbdFromTemplate'), create(CloneRbdFromTemplateRequestSchema, { targetPool: 'rbd' }))).toEqual({
      kind: 'pool',
      name: 'rbd',
    });
  });

  it('is undefined for collections and the caller itself', () => {
    expect(resourceOf(method(AccessService, 'WhoAmI'), create(WhoAmIRequestSchema, {}))).toBeUndefined();
    expect(resourceOf(method(StorageService, 'ListVolumes'), create(ListVolumesRequestSchema, {}))).toBeUndefined();
    expect(resourceOf(method(StorageService, 'ListVolumes'), create(ListVolumesRequestSchema, { pool: 'rbd' }))).toEqual({ kind: 'pool', name: 'rbd' });
    expect(resourceOf(method(AccessService, 'CreateApiKey'), create(CreateApiKeyRequestSchema, {}))).toBeUndefined();
  });

  it('compiles every RPC’s resource_field and other_resources at start-up (a bad path would throw)', () => {
    for (const m of API_SERVICES.flatMap((s) => s.methods)) {
      const options = getOption(m, rpc_policy);
      const declared = [...(options.resourceField === '' ? [] : [options.resourceKind]), ...options.otherResources.map((o) => o.kind)];
      expect(policy(m).targets.map((t) => t.kind), m.name).toEqual(declared.map((k) => resourceKindName(k)));
    }
  });
});

describe('canGrant (escalation prevention)', () => {
  it('counts only grants of unscoped roles: a scoped role’s grants are never handed on; its denies still count', () => {
    const ciVms = role('ci-vms', ['vm:*', 'access:impersonate'], [], [{ kind: 'vm', glob: 'ci-*' }]);
    expect(canGrant([ciVms], ['vm:start'])).toEqual({ ok: false, excess: ['vm:start'] });
    expect(canGrant([ciVms], ['access:impersonate'])).toEqual({ ok: false, excess: ['access:impersonate'] });
    expect(canGrant([ciVms, builtin('operator')], ['vm:start', 'access:impersonate'])).toEqual({ ok: false, excess: ['access:impersonate'] });
    expect(canGrant([ciVms], ['vm:start'], undefined, true)).toEqual({ ok: false, excess: ['vm:start'] }); // bootstrap admins too
    const scopedDeny = role('no-destroy-ci', [], ['vm:destroy'], [{ kind: 'vm', glob: 'ci-*' }]);
    expect(canGrant([builtin('admin'), scopedDeny], ['vm:*'])).toEqual({ ok: false, excess: ['vm:*'] });
    expect(canGrant([builtin('admin'), scopedDeny], ['vm:start'])).toEqual({ ok: true });
  });

  it('allows subsets, including narrower wildcards', () => {
    expect(canGrant([builtin('developer')], ['storage:snapshot:create', 'storage:clone:*', 'node:list'])).toEqual({ ok: true });
    expect(canGrant([builtin('operator')], ['storage:*', 'vm:snapshot:*', 'node:list'])).toEqual({ ok: true });
    expect(canGrant([builtin('admin')], ['*'])).toEqual({ ok: true });
    expect(canGrant([builtin('developer')], [])).toEqual({ ok: true });
  });

  it('refuses anything the holder does not hold', () => {
    expect(canGrant([builtin('developer')], ['storage:snapshot:delete', 'node:list'])).toEqual({ ok: false, excess: ['storage:snapshot:delete'] });
    expect(canGrant([builtin('developer')], ['storage:*'])).toEqual({ ok: false, excess: ['storage:*'] });
    expect(canGrant([builtin('operator')], ['*'])).toEqual({ ok: false, excess: ['*'] });
    expect(canGrant([builtin('operator')], ['access:role:put'])).toEqual({ ok: false, excess: ['access:role:put'] });
    // viewer holds *:list, which does not cover *:*:list's neighbours or everything
    expect(canGrant([builtin('viewer')], ['*:list', '*:*:list'])).toEqual({ ok: true });
    expect(canGrant([builtin('viewer')], ['*:*'])).toEqual({ ok: false, excess: ['*:*'] });
    expect(canGrant([role('l', ['*:list'])], ['*:*:list'])).toEqual({ ok: false, excess: ['*:*:list'] });
  });

  it('refuses invalid permissions', () => {
    expect(canGrant([builtin('admin')], ['node::list', 'Node:list', 'a:b:c:d:e', ''])).toEqual({
      ok: false,
      excess: ['node::list', 'Node:list', 'a:b:c:d:e', ''],
    });
  });

  it('refuses patterns that could reach something the holder is denied', () => {
    const holder = [builtin('admin'), role('no-destroy', [], ['vm:destroy'])];
    expect(canGrant(holder, ['vm:start', 'node:*'])).toEqual({ ok: true });
    expect(canGrant(holder, ['vm:*'])).toEqual({ ok: false, excess: ['vm:*'] });
    expect(canGrant(holder, ['*:destroy'])).toEqual({ ok: false, excess: ['*:destroy'] });
    expect(canGrant(holder, ['*'])).toEqual({ ok: false, excess: ['*'] });
    expect(canGrant(holder, ['vm:destroy'])).toEqual({ ok: false, excess: ['vm:destroy'] });
  });

  it('a key cannot mint a key broader than itself', () => {
    const owner = [builtin('operator')];
    expect(canGrant(owner, ['vm:start'], ['vm:*'])).toEqual({ ok: true });
    expect(canGrant(owner, ['storage:snapshot:list'], ['vm:*'])).toEqual({ ok: false, excess: ['storage:snapshot:list'] });
    expect(canGrant(owner, ['vm:*'], ['vm:start'])).toEqual({ ok: false, excess: ['vm:*'] });
  });
});

describe('keyScopeShows (what a list RPC shows a scoped key)', () => {
  it('shows everything without a scope, and with one only what its globs of the kind match under any name', () => {
    expect(keyScopeShows(undefined, 'vm', 'web-1')).toBe(true);
    expect(keyScopeShows([], 'vm', 'web-1')).toBe(true);
    const scope = [{ kind: 'vm', glob: 'build-*' }, { kind: 'pool', glob: 'ci-*' }];
    expect(keyScopeShows(scope, 'vm', 'build-7')).toBe(true);
    expect(keyScopeShows(scope, 'vm', 'web-1')).toBe(false);
    // A scope without globs of the kind shows none of it.
    expect(keyScopeShows(scope, 'network', 'default')).toBe(false);
    expect(keyScopeShows([{ kind: 'image', glob: 'debian-*' }], 'image', 'sha256:ab', 'debian-12')).toBe(true);
  });
});
