// Event visibility, compiled from the EventKind options against the real policies, decided by
// the authorize() the RBAC step uses: permissions, owner scoping, key and role globs.
import { describe, expect, it } from 'vitest';
import { create } from '@bufbuild/protobuf';
import { authorize, type ResourceGlob } from '../../src/authz/decide.js';
import { BUILTIN_ROLES, type Role } from '../../src/authz/roles.js';
import { EventKind, EventSchema, type Event } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { EventVisibility, type Allows } from '../../src/events/visibility.js';
import { methodIndex } from '../../src/rpc/policy.js';
import type { Principal } from '../../src/rpc/principal.js';
import { API_SERVICES } from '../../src/services/registry.js';

const methods = methodIndex(API_SERVICES);
const visibility = EventVisibility.compile(methods);

/** The decision AccessState.allows makes, for a principal holding `roles`. */
function allowsWith(roles: readonly Role[]): Allows {
  return (principal, required, resources) => authorize({ roles, required, ...(principal.apiKey ? { apiKey: principal.apiKey } : {}), ...(resources ? { resources } : {}) }).allowed;
}
const builtin = (name: string): Role => {
  const role = BUILTIN_ROLES.get(name);
  if (!role) throw new Error(name);
  return role;
};
const me: Principal = { id: 'spiffe://debvisor/user/me', kind: 'certificate' };
const keyed = (resourceGlobs: ResourceGlob[]): Principal => ({ id: me.id, kind: 'api_key', apiKey: { id: 'k1', permissions: ['*'], resourceGlobs } });

const vm = (name: string): Event => create(EventSchema, { kind: EventKind.VM_STATE_CHANGED, resource: { kind: ResourceKind.VM, node: 'n1', name } });
const volume = (pool: string, name: string): Event => create(EventSchema, { kind: EventKind.VOLUME_CREATED, resource: { kind: ResourceKind.VOLUME, node: 'n1', name: `${pool}/${name}`, pool } });
const operation = (owner: string): Event => create(EventSchema, { kind: EventKind.OPERATION_FINISHED, resource: { kind: ResourceKind.OPERATION, name: 'op-1', owner } });
const alert = create(EventSchema, { kind: EventKind.SECURITY_ALERT, resource: { kind: ResourceKind.NODE, name: 'n1' } });

describe('EventVisibility.compile', () => {
  it('compiles every kind of the proto against the API policies', () => {
    expect(() => EventVisibility.compile(methods)).not.toThrow();
  });
  it('fails naming the kind when its RPC is unknown', () => {
    const withoutVms = methodIndex(API_SERVICES.filter((service) => service !== VmService));
    expect(() => EventVisibility.compile(withoutVms)).toThrow(/EVENT_KIND_VM_STATE_CHANGED: event_visibility "debvisor.v1.VmService.GetVm" names no RPC/);
  });
  it('fails when a permission is not declared in the service chain_permissions', () => {
    expect(() => EventVisibility.compile(methods, VmService)).toThrow(/EVENT_KIND_SECURITY_ALERT: event_permission "access:audit:read"/);
  });
});

describe('EventVisibility.visible', () => {
  it('follows the permission of the RPC that reads the resource', () => {
    expect(visibility.visible(allowsWith([builtin('viewer')]), me, vm('web-1'))).toBe(true);
    expect(visibility.visible(allowsWith([builtin('monitor')]), me, vm('web-1'))).toBe(false);
    expect(visibility.visible(allowsWith([builtin('monitor')]), me, create(EventSchema, { kind: EventKind.NODE_ONLINE, resource: { kind: ResourceKind.NODE, name: 'n1' } }))).toBe(true);
  });

  it('keeps a key scoped to vm=build-* to those VMs, and a pool-scoped key to its pools', () => {
    const allows = allowsWith([builtin('admin')]);
    const buildKey = keyed([{ kind: 'vm', glob: 'build-*' }]);
    expect(visibility.visible(allows, buildKey, vm('build-7'))).toBe(true);
    expect(visibility.visible(allows, buildKey, vm('prod-1'))).toBe(false);
    const ciKey = keyed([{ kind: 'pool', glob: 'ci-*' }]);
    expect(visibility.visible(allows, ciKey, volume('ci-fast', 'v1'))).toBe(true);
    expect(visibility.visible(allows, ciKey, volume('prod', 'v1'))).toBe(false);
  });

  it('keeps a role scoped by globs to its resources', () => {
    const scoped: Role = { name: 'build-viewer', description: '', permissions: ['vm:get'], deny: [], resourceGlobs: [{ kind: 'vm', glob: 'build-*' }], builtin: false };
    expect(visibility.visible(allowsWith([scoped]), me, vm('build-1'))).toBe(true);
    expect(visibility.visible(allowsWith([scoped]), me, vm('prod-1'))).toBe(false);
  });

  it("shows operations of others only with the ':any' permission", () => {
    const developer = allowsWith([builtin('developer')]);
    expect(visibility.visible(developer, me, operation(me.id))).toBe(true);
    expect(visibility.visible(developer, me, operation('someone-else'))).toBe(false);
    expect(visibility.visible(allowsWith([builtin('viewer')]), me, operation('someone-else'))).toBe(true);
  });

  it('shows security alerts only to holders of access:audit:read', () => {
    expect(visibility.visible(allowsWith([builtin('viewer')]), me, alert)).toBe(false);
    expect(visibility.visible(allowsWith([builtin('admin')]), me, alert)).toBe(true);
  });

  it('always shows control events', () => {
    expect(visibility.visible(allowsWith([]), me, create(EventSchema, { kind: EventKind.HEARTBEAT }))).toBe(true);
  });
});
