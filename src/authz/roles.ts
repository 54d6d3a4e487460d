// Built-in roles, as data. Custom roles (AccessService.PutRole) have the same shape
// and are stored elsewhere; built-in ones cannot be changed or deleted.
//
// Built-in roles deliberately carry no deny entries: a deny wins over every grant of
// every role a principal holds, so a deny in a commonly combined built-in role (say
// viewer) would silently take rights away from an admin who also holds it. Denies are
// for custom roles written to restrict.
import type { ResourceGlob } from './globs.js';

/** A named set of permission patterns. `deny` wins over any grant, across all of a principal's roles. */
export interface Role {
  readonly name: string;
  readonly description: string;
  readonly permissions: readonly string[];
  readonly deny: readonly string[];
  /**
   * Scope of the grants (never of the denies): on a call naming a resource of a kind listed
   * here, the role grants only if one of that kind's globs matches its name. Empty: unscoped.
   */
  readonly resourceGlobs: readonly ResourceGlob[];
  readonly builtin: boolean;
}

/** What a role may be called (built-in and custom roles, config bindings). */
export const ROLE_NAME = /^[a-z][a-z0-9_-]{0,62}$/;

/** Reads of the caller's own operations (handlers filter by owner). */
const OWN_OPERATION_READS = ['operation:get', 'operation:list', 'operation:wait', 'operation:watch'] as const;

/** Self-service API keys: the handler restricts these to the caller's own keys, and CreateApiKey refuses escalation (canGrant). */
const OWN_API_KEYS = ['access:apikey:create', 'access:apikey:list', 'access:apikey:revoke', 'access:apikey:rotate'] as const;

/**
 * A user's own sessions (CreateUserSession needs no permission, only an impersonated call):
 * list them and log out; a certificate may revoke the sessions it created. Viewers list
 * theirs through `*:*:list`, and never mutate.
 */
const OWN_SESSIONS = ['access:session:list', 'access:session:revoke'] as const;

function builtin(name: string, description: string, permissions: readonly string[]): Role {
  return Object.freeze({ name, description, permissions: Object.freeze([...permissions]), deny: Object.freeze([]), resourceGlobs: Object.freeze([]), builtin: true });
}

const ROLES: readonly Role[] = [
  builtin('admin', 'Everything, including access control and other principals’ keys and operations.', ['*']),
  builtin('operator', 'Runs the cluster: nodes, VMs, storage, images, migrations and everyone’s operations; own API keys and sessions.', [
    'node:*',
    'vm:*',
    'storage:*',
    // VM interfaces on any network (CreateVm, UpdateVm).
    'network:use',
    'image:*',
    'migration:*',
    'operation:*',
    'event:watch',
    ...OWN_API_KEYS,
    ...OWN_SESSIONS,
  ]),
  builtin('developer', 'Snapshots and template clones, read-only views of nodes, volumes, images and VMs; own operations, API keys and sessions.', [
    'node:list',
    'storage:volume:list',
    'image:list',
    'image:get',
    'storage:snapshot:create',
    'storage:snapshot:list',
    'storage:clone:*',
    'vm:list',
    'vm:get',
    'event:watch',
    ...OWN_OPERATION_READS,
    ...OWN_API_KEYS,
    ...OWN_SESSIONS,
  ]),
  builtin('monitor', 'Node agents and monitoring: node reads and heartbeats.', ['node:list', 'node:get', 'node:heartbeat', 'event:watch']),
  builtin('viewer', 'Read-only: every list and get (own API keys only), and every operation.', [
    '*:list',
    '*:*:list',
    '*:get',
    '*:*:get',
    'operation:wait',
    'operation:watch',
    // The events of what the other grants let it read (src/events/visibility.ts).
    'event:watch',
    // Reads of other principals' operations (see crossPrincipal()).
    'operation:get:any',
    'operation:list:any',
    'operation:wait:any',
    'operation:watch:any',
  ]),
];

/** The built-in roles by name. */
export const BUILTIN_ROLES: ReadonlyMap<string, Role> = new Map(ROLES.map((r) => [r.name, r]));

/** True if `name` is a built-in role (which PutRole/DeleteRole must refuse to touch). */
export function isBuiltinRole(name: string): boolean {
  return BUILTIN_ROLES.has(name);
}
