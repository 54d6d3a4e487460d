// The permission catalogue: derived from the proto's RPC policies, it decides which
// permissions roles and keys may name, and which declared one a typo was meant to be.
import { IMPERSONATE_PERMISSION } from '../../src/rpc/impersonation-names.js';
import { describe, expect, it } from 'vitest';
import { PermissionCatalogue } from '../../src/authz/catalogue.js';
import { isValidPermission, permissionMatches } from '../../src/authz/permission.js';
import { compilePolicy, methodIndex } from '../../src/rpc/policy.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { seededRandom } from '../support/random.js';

const catalogue = PermissionCatalogue.of(methodIndex(API_SERVICES).values());
const declared = API_SERVICES.flatMap((s) => s.methods).flatMap((m) => compilePolicy(m)?.permission || []);

describe('PermissionCatalogue.of', () => {
  it('holds every permission an RPC declares, and nothing that is not derived from one or a service’s chain permissions', () => {
    for (const p of declared) expect(catalogue.permissions).toContain(p);
    const chainPermissions = ['access:impersonate', 'access:audit:read', 'network:use', 'storage:template:clone'];
    for (const p of catalogue.permissions) {
      expect(declared.includes(p) || chainPermissions.includes(p) || (p.endsWith(':any') && declared.includes(p.slice(0, -':any'.length))), p).toBe(true);
    }
  });

  it('holds the chain’s impersonation permission, declared by AccessService', () => {
    expect(catalogue.permissions).toContain(IMPERSONATE_PERMISSION);
    expect(catalogue.check(IMPERSONATE_PERMISSION)).toBeUndefined();
  });

  it('adds ":any" exactly for owner-scoped RPCs', () => {
    expect(catalogue.permissions.filter((p) => p.endsWith(':any'))).toEqual(
      ['access:apikey:create', 'access:apikey:list', 'access:apikey:revoke', 'access:apikey:rotate', 'access:quota:get', 'access:session:list', 'access:session:revoke', 'operation:cancel', 'operation:get', 'operation:list', 'operation:wait', 'operation:watch'].map(
        (p) => `${p}:any`,
      ),
    );
    expect(catalogue.check('vm:start:any')).toBeDefined();
  });

  it('has no permission for WhoAmI, which needs none', () => {
    expect(catalogue.permissions.some((p) => p.includes('whoami'))).toBe(false);
    expect(catalogue.check('access:whoami')).toBeDefined();
  });

  it('is sorted and free of duplicates', () => {
    expect([...catalogue.permissions]).toEqual([...new Set(catalogue.permissions)].sort());
  });
});

describe('PermissionCatalogue.check', () => {
  it('accepts declared permissions and wildcards that match at least one', () => {
    for (const p of [...catalogue.permissions, '*', 'storage:*', 'storage:snapshot:*', '*:list', '*:*:list', 'vm:*:create', 'operation:*', 'access:apikey:*']) {
      expect(catalogue.check(p), p).toBeUndefined();
    }
  });

  it('refuses a mistyped permission with the closest declared one as the hint', () => {
    expect(catalogue.check('storage:snapshot:prun')).toEqual({ permission: 'storage:snapshot:prun', hint: 'storage:snapshot:prune' });
    expect(catalogue.check('vm:strat')).toEqual({ permission: 'vm:strat', hint: 'vm:start' });
    expect(catalogue.check('acess:role:put')?.hint).toBe('access:role:put');
    expect(catalogue.check('storage:volume:lists')?.hint).toBe('storage:volume:list');
  });

  it('refuses a wildcard that matches nothing, hinting a wildcard that does', () => {
    expect(catalogue.check('stroage:*')).toEqual({ permission: 'stroage:*', hint: 'storage:*' });
    expect(catalogue.check('*:lsit')?.hint).toBe('*:list');
    expect(catalogue.check('vm:*:*:*')).toBeDefined(); // four or more segments: nothing has that many
    expect(catalogue.check('*:*:*:delete')).toBeDefined();
    expect(catalogue.check('node')).toBeDefined();
  });

  it('hints only permissions that exist, or wildcards that match one (seeded typos)', () => {
    const random = seededRandom(17);
    const letters = 'abcdefghijklmnopqrstuvwxyz:*';
    for (let i = 0; i < 500; i++) {
      const base = catalogue.permissions[Math.floor(random() * catalogue.permissions.length)]!;
      const at = Math.floor(random() * base.length);
      const typo = base.slice(0, at) + letters[Math.floor(random() * letters.length)]! + base.slice(at + (random() < 0.5 ? 1 : 0));
      const problem = catalogue.check(typo);
      if (!problem) {
        expect(isValidPermission(typo) && catalogue.permissions.some((p) => permissionMatches(typo, p)), typo).toBe(true);
        continue;
      }
      expect(problem.permission).toBe(typo);
      if (typo.includes('*')) expect(catalogue.matchesAny(problem.hint), `${typo} → ${problem.hint}`).toBe(true);
      else expect(catalogue.permissions, `${typo} → ${problem.hint}`).toContain(problem.hint);
    }
  });

  it('works on any list of permissions', () => {
    const small = new PermissionCatalogue(['a:b', 'a:c:d']);
    expect(small.check('a:*')).toBeUndefined();
    expect(small.check('a:b')).toBeUndefined();
    expect(small.check('a:x')).toEqual({ permission: 'a:x', hint: 'a:b' });
    expect(small.check('b:*')).toEqual({ permission: 'b:*', hint: 'a:*' });
  });
});
