// The built-in roles against the real API: for every RPC in the proto and every
// built-in role, the decision must be what the role is meant to allow.
import { describe, expect, it } from 'vitest';
import type { DescMethod } from '@bufbuild/protobuf';
import { API_SERVICES } from '../../src/services/registry.js';
import { compilePolicy, methodIndex } from '../../src/rpc/policy.js';
import { authorize } from '../../src/authz/decide.js';
import { crossPrincipal, isValidPermission } from '../../src/authz/permission.js';
import { PermissionCatalogue } from '../../src/authz/catalogue.js';
import { BUILTIN_ROLES, isBuiltinRole, type Role } from '../../src/authz/roles.js';

interface Rpc {
  readonly path: string;
  readonly permission: string;
  readonly mutates: boolean;
}

// RPCs open to every authenticated caller (WhoAmI) need no grant: not in the table.
const RPCS: Rpc[] = API_SERVICES.flatMap((s) => s.methods)
  .filter((m: DescMethod) => !compilePolicy(m)!.anyAuthenticated)
  .map((m: DescMethod) => {
    const policy = compilePolicy(m)!;
    return { path: `${m.parent.name}.${m.name}`, permission: policy.permission, mutates: policy.mutates };
  });

const service = (p: string) => p.split(':')[0]!;

/** What each role is meant to allow, stated independently of its patterns. */
const INTENT: Record<string, (rpc: Rpc) => boolean> = {
  admin: () => true,
  operator: (r) =>
    ['node', 'vm', 'storage', 'image', 'migration', 'operation'].includes(service(r.permission)) ||
    r.permission === 'event:watch' ||
    r.permission.startsWith('access:apikey:') ||
    r.permission.startsWith('access:session:'),
  developer: (r) =>
    [
      'node:list',
      'storage:volume:list',
      'storage:snapshot:create',
      'storage:snapshot:list',
      'storage:clone:create',
      'image:list',
      'image:get',
      'vm:list',
      'vm:get',
      'event:watch',
      'operation:get',
      'operation:list',
      'operation:wait',
      'operation:watch',
      'access:apikey:create',
      'access:apikey:list',
      'access:apikey:revoke',
      'access:apikey:rotate',
      'access:session:list',
      'access:session:revoke',
    ].includes(r.permission),
  monitor: (r) => ['node:list', 'node:get', 'node:heartbeat', 'event:watch'].includes(r.permission),
  // Every read, except PrepareMigration (a dry run of an operator action, not a read of state)
  // and BackupStore (a copy of the whole store, API key hashes included: for admins only).
  viewer: (r) => !r.mutates && r.permission !== 'migration:plan' && r.permission !== 'store:backup',
};

const allows = (role: Role, permission: string) => authorize({ roles: [role], required: permission }).allowed;

describe('built-in roles', () => {
  it('are exactly admin, operator, developer, monitor, viewer', () => {
    expect([...BUILTIN_ROLES.keys()].sort()).toEqual(Object.keys(INTENT).sort());
    for (const [name, role] of BUILTIN_ROLES) {
      expect(role.name).toBe(name);
      expect(role.builtin).toBe(true);
      expect(role.deny).toEqual([]);
      expect(role.resourceGlobs).toEqual([]); // unscoped: their grants may be handed on (canGrant)
      expect(isBuiltinRole(name)).toBe(true);
      expect(Object.isFrozen(role) && Object.isFrozen(role.permissions)).toBe(true);
    }
    expect(isBuiltinRole('ci')).toBe(false);
  });

  it('use only valid permission patterns', () => {
    for (const role of BUILTIN_ROLES.values()) for (const p of role.permissions) expect(isValidPermission(p), `${role.name}: ${p}`).toBe(true);
  });

  it('have no dead grants: each pattern matches a permission the API declares', () => {
    const catalogue = PermissionCatalogue.of(methodIndex(API_SERVICES).values());
    for (const role of BUILTIN_ROLES.values()) {
      for (const p of role.permissions) expect(catalogue.check(p), `${role.name}: ${p}`).toBeUndefined();
    }
  });

  const table = RPCS.flatMap((rpc) => [...BUILTIN_ROLES.keys()].map((role) => [rpc.path, rpc.permission, role, INTENT[role]!(rpc)] as const));
  it.each(table)('%s (%s) for %s → %s', (_path, permission, role, expected) => {
    expect(allows(BUILTIN_ROLES.get(role)!, permission)).toBe(expected);
  });

  it('the table covers the whole API', () => {
    expect(RPCS.length).toBeGreaterThanOrEqual(45);
    expect(new Set(RPCS.map((r) => service(r.permission)))).toEqual(new Set(['access', 'node', 'vm', 'migration', 'storage', 'image', 'operation', 'store', 'event']));
  });

  it('no role grants WhoAmI: it is open to every authenticated caller by its policy', () => {
    const whoAmI = API_SERVICES.flatMap((s) => s.methods).find((m) => m.name === 'WhoAmI')!;
    expect(compilePolicy(whoAmI)).toMatchObject({ anyAuthenticated: true, permission: '' });
  });

  it('viewer never mutates; monitor mutates only by heartbeat', () => {
    const viewer = BUILTIN_ROLES.get('viewer')!;
    const monitor = BUILTIN_ROLES.get('monitor')!;
    expect(RPCS.filter((r) => r.mutates && allows(viewer, r.permission))).toEqual([]);
    expect(RPCS.filter((r) => r.mutates && allows(monitor, r.permission)).map((r) => r.permission)).toEqual(['node:heartbeat']);
  });

  it('cross-principal reads: admin and operator see everyone’s operations, viewer reads them, developer only its own', () => {
    const reads = ['operation:get', 'operation:list', 'operation:wait', 'operation:watch'].map(crossPrincipal);
    const cancelAny = crossPrincipal('operation:cancel');
    const r = (name: string) => BUILTIN_ROLES.get(name)!;
    for (const p of reads) {
      expect(allows(r('admin'), p)).toBe(true);
      expect(allows(r('operator'), p)).toBe(true);
      expect(allows(r('viewer'), p)).toBe(true);
      expect(allows(r('developer'), p)).toBe(false);
      expect(allows(r('monitor'), p)).toBe(false);
    }
    expect(allows(r('operator'), cancelAny)).toBe(true);
    expect(allows(r('viewer'), cancelAny)).toBe(false);
    // Other principals' API keys: admin only.
    for (const p of ['access:apikey:list', 'access:apikey:revoke', 'access:apikey:rotate', 'access:apikey:create'].map(crossPrincipal)) {
      expect([...BUILTIN_ROLES.values()].filter((role) => allows(role, p)).map((role) => role.name)).toEqual(['admin']);
    }
  });
});
