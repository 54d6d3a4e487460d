// Who may see an event, compiled once at start-up from each EventKind's proto option: either
// the RPC whose policy governs reading the resource (`event_visibility`), or a bare
// permission (`event_permission`). A caller sees an event only if that RPC's RBAC decision,
// made by the same authorize() the chain uses, would let it read the event's resource.
import { create, getOption, hasOption, type DescService } from '@bufbuild/protobuf';
import { crossPrincipal } from '../authz/permission.js';
import { EventKind, EventKindSchema, EventResourceSchema, EventService, type Event, type EventResource } from '../gen/debvisor/v1/event_pb.js';
import { chain_permissions, event_permission, event_visibility } from '../gen/debvisor/v1/options_pb.js';
import type { PolicyIndex, ResourceRef, ResourceTarget } from '../rpc/policy.js';
import { resourceKindName } from '../rpc/policy.js';
import type { Principal } from '../rpc/principal.js';

const NO_RESOURCE = create(EventResourceSchema);

/** Kinds every stream receives, whatever it asked for and may read. */
export const CONTROL_KINDS: ReadonlySet<EventKind> = new Set([EventKind.RESYNC_REQUIRED, EventKind.HEARTBEAT]);

/** The one decision visibility needs: AccessState.allows. */
export type Allows = (principal: Principal, permission: string, resources?: readonly ResourceRef[]) => boolean;

interface Rule {
  readonly permission: string;
  /** The governing RPC is owner-scoped: another principal's object needs `<permission>:any`. */
  readonly ownerScoped: boolean;
  /** The resources the governing RPC names (its targets), to be filled from the event. */
  readonly targets: readonly ResourceTarget[];
}

/** The value of the RPC target of kind `kind` on an event's resource. */
function targetValue(kind: string, resource: EventResource): string {
  if (kind === resourceKindName(resource.kind)) return resource.name;
  if (kind === 'pool') return resource.pool;
  if (kind === 'principal') return resource.owner;
  if (kind === 'node') return resource.node;
  return resource.name;
}

export class EventVisibility {
  private constructor(private readonly rules: ReadonlyMap<EventKind, Rule>) {}

  /**
   * Compiles every kind's visibility; throws, naming the kind, for a kind with neither option
   * or both, one naming an RPC that has no policy, or a permission the service does not declare.
   */
  static compile(methods: PolicyIndex, service: DescService = EventService): EventVisibility {
    const declared = new Set(getOption(service, chain_permissions));
    const rules = new Map<EventKind, Rule>();
    for (const kind of Object.values(EventKind).filter((v): v is EventKind => typeof v === 'number')) {
      const value = EventKindSchema.value[kind];
      if (kind === EventKind.UNSPECIFIED || CONTROL_KINDS.has(kind)) continue;
      const byRpc = hasOption(value, event_visibility) ? getOption(value, event_visibility) : '';
      const byPermission = hasOption(value, event_permission) ? getOption(value, event_permission) : '';
      if ((byRpc === '') === (byPermission === '')) throw new Error(`${value.name}: declare exactly one of (debvisor.v1.event_visibility) and (debvisor.v1.event_permission)`);
      if (byPermission !== '') {
        if (!declared.has(byPermission)) throw new Error(`${value.name}: event_permission "${byPermission}" is not among ${service.typeName}'s chain_permissions`);
        rules.set(kind, { permission: byPermission, ownerScoped: false, targets: [] });
        continue;
      }
      const dot = byRpc.lastIndexOf('.');
      const policy = methods.get(`/${byRpc.slice(0, dot)}/${byRpc.slice(dot + 1)}`);
      if (!policy || policy.anyAuthenticated) throw new Error(`${value.name}: event_visibility "${byRpc}" names no RPC with a permission`);
      rules.set(kind, { permission: policy.permission, ownerScoped: policy.ownerScoped, targets: policy.targets });
    }
    return new EventVisibility(rules);
  }

  /** Whether `principal` may see `event` (control kinds: always). */
  visible(allows: Allows, principal: Principal, event: Event): boolean {
    if (CONTROL_KINDS.has(event.kind)) return true;
    const rule = this.rules.get(event.kind);
    if (!rule) return false;
    // No resource: as a call naming none (a list), decided by the permission alone.
    const resource = event.resource ?? NO_RESOURCE;
    const resources = rule.targets.flatMap((target) => {
      const name = targetValue(target.kind, resource);
      return name !== '' || target.checkEmpty ? [{ kind: target.kind, name }] : [];
    });
    const required = rule.ownerScoped && resource.owner !== principal.id ? crossPrincipal(rule.permission) : rule.permission;
    return allows(principal, required, resources);
  }
}
