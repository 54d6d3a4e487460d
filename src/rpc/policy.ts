// Reads each RPC's policy from its proto method option: the API is the one
// place that says what an RPC needs.
import { ScalarType, getOption, hasOption, type DescField, type DescMethod, type DescService, type Message } from '@bufbuild/protobuf';
import { reflect, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import { ResourceKind, rpc_policy, type RpcPolicy } from '../gen/debvisor/v1/options_pb.js';
import { methodPath } from './adapter.js';

/** The method's policy; undefined (refused to every caller) unless it declares a permission or `any_authenticated`. */
export function policyOf(method: DescMethod): RpcPolicy | undefined {
  if (!hasOption(method, rpc_policy)) return undefined;
  const policy = getOption(method, rpc_policy);
  return policy.permission === '' && !policy.anyAuthenticated ? undefined : policy;
}

/** A policy that says two things at once fails at start-up instead of meaning one of them. */
function checkPolicy(method: DescMethod, policy: RpcPolicy): void {
  const where = `${method.parent.typeName}.${method.name}`;
  if (policy.anyAuthenticated && policy.permission !== '') throw new Error(`${where}: any_authenticated RPCs declare no permission`);
  if (policy.anyAuthenticated && policy.ownerScoped) throw new Error(`${where}: owner_scoped needs a permission`);
}

export interface MethodEntry {
  readonly method: DescMethod;
  readonly policy: RpcPolicy;
}

/**
 * Method and policy by path, for the chain's per-call lookups. Unannotated methods are
 * absent, so the RBAC step denies them. A policy naming a request field that does not
 * exist fails here, at start-up, rather than on a call.
 */
export function methodIndex(services: readonly DescService[]): Map<string, MethodEntry> {
  const index = new Map<string, MethodEntry>();
  for (const service of services) {
    for (const method of service.methods) {
      const policy = policyOf(method);
      if (!policy) continue;
      checkPolicy(method, policy);
      resourcePathsOf(method);
      quotaAmountPathOf(method);
      auditObjectTemplateOf(method);
      index.set(methodPath(method), { method, policy });
    }
  }
  return index;
}

// ---------------------------------------------------------------------------
// The target resources of a request (`resource_field`, `other_resources`): compiled once
// per method, then read by RBAC, audit and the bounds step.

/** The resource an RPC targets, e.g. `{ kind: 'pool', name: 'rbd' }`. */
export interface ResourceRef {
  readonly kind: string;
  readonly name: string;
}

/** ResourceKind enum value → the lower-case kind name used in resource globs: RESOURCE_KIND_API_KEY → `api_key`. */
export const RESOURCE_KIND_NAMES: ReadonlyMap<ResourceKind, string> = new Map(
  Object.values(ResourceKind)
    .filter((v): v is ResourceKind => typeof v === 'number' && v !== ResourceKind.UNSPECIFIED)
    .map((v) => [v, ResourceKind[v].toLowerCase()]),
);

const KIND_BY_NAME: ReadonlyMap<string, ResourceKind> = new Map([...RESOURCE_KIND_NAMES].map(([k, n]) => [n, k]));

/** The kind name of a ResourceKind (undefined for UNSPECIFIED). */
export function resourceKindName(kind: ResourceKind): string | undefined {
  return RESOURCE_KIND_NAMES.get(kind);
}

/** The ResourceKind of a kind name (`pool` → RESOURCE_KIND_POOL), for decoding stored globs. */
export function resourceKindFromName(name: string): ResourceKind | undefined {
  return KIND_BY_NAME.get(name);
}

export interface ResourcePath {
  readonly kind: string;
  readonly fields: readonly DescField[];
  /** From `other_resources`: an empty value is checked too (the handler would pick a default). */
  readonly checkEmpty: boolean;
}

const pathCache = new WeakMap<DescMethod, readonly ResourcePath[]>();

/**
 * Compiles one dotted request-field path of a policy option: singular message fields down to
 * a singular scalar leaf of one of `leafTypes`. Throws naming `where` otherwise.
 */
function compileFieldPath(method: DescMethod, dotted: string, where: string, leafTypes: readonly ScalarType[], leafWhat: string, repeatedLeaf = false): readonly DescField[] {
  const fields: DescField[] = [];
  let message = method.input;
  const names = dotted.split('.');
  names.forEach((name, i) => {
    const field = message.fields.find((f) => f.name === name);
    if (!field) throw new Error(`${where}: no field "${name}" in ${message.typeName}`);
    if (i < names.length - 1) {
      if (field.fieldKind !== 'message') throw new Error(`${where}: "${name}" is not a singular message`);
      message = field.message;
    } else if (!((field.fieldKind === 'scalar' || (repeatedLeaf && field.fieldKind === 'list' && field.listKind === 'scalar')) && leafTypes.includes(field.scalar))) {
      throw new Error(`${where}: "${name}" is not a singular ${leafWhat}`);
    }
    fields.push(field);
  });
  return fields;
}

/** The value at a compiled path of `request`; undefined where a message on the way is unset. */
function leafValue(method: DescMethod, request: Message, fields: readonly DescField[]): unknown {
  let r: ReflectMessage = reflect(method.input, request);
  const last = fields.length - 1;
  for (let i = 0; i < last; i++) {
    const field = fields[i];
    if (field?.fieldKind !== 'message' || !r.isSet(field)) return undefined;
    r = r.get(field);
  }
  const leaf = fields[last];
  if (leaf?.fieldKind === 'scalar') return r.get(leaf);
  if (leaf?.fieldKind === 'list' && leaf.listKind === 'scalar') return [...r.get(leaf)];
  return undefined;
}

/** Compiles one target path of a policy; throws if it is not a singular string. */
function compilePath(method: DescMethod, kindValue: ResourceKind, dotted: string, option: string, checkEmpty: boolean): ResourcePath {
  const where = `${method.parent.typeName}.${method.name}: ${option} "${dotted}"`;
  const kind = resourceKindName(kindValue);
  if (kind === undefined) throw new Error(`${where}: no resource kind`);
  return { kind, fields: compileFieldPath(method, dotted, where, [ScalarType.STRING], 'string'), checkEmpty };
}

const INTEGER_TYPES = [ScalarType.UINT64, ScalarType.INT64, ScalarType.UINT32, ScalarType.INT32, ScalarType.FIXED64, ScalarType.FIXED32, ScalarType.SFIXED64, ScalarType.SFIXED32, ScalarType.SINT64, ScalarType.SINT32];
const amountCache = new WeakMap<DescMethod, readonly DescField[] | null>();

/** The compiled `quota_amount_field` of a method (nested paths work), or undefined if it declares none. Throws if the field is missing or no integer. */
function quotaAmountPathOf(method: DescMethod): readonly DescField[] | undefined {
  let cached = amountCache.get(method);
  if (cached === undefined) {
    const dotted = policyOf(method)?.quotaAmountField ?? '';
    cached = dotted === '' ? null : compileFieldPath(method, dotted, `${method.parent.typeName}.${method.name}: quota_amount_field "${dotted}"`, INTEGER_TYPES, 'integer');
    amountCache.set(method, cached);
  }
  return cached ?? undefined;
}

/** The quota amount a request declares through `quota_amount_field` (0 where unset), or undefined if the RPC declares none. */
export function quotaAmountOf(method: DescMethod, request: Message): bigint | undefined {
  const path = quotaAmountPathOf(method);
  if (!path) return undefined;
  const value = leafValue(method, request, path);
  return typeof value === 'bigint' ? value : typeof value === 'number' ? BigInt(Math.trunc(value)) : 0n;
}

/**
 * The compiled target paths of a method: its `resource_field` first (if any), then
 * each of its `other_resources`. The one place the daemon reads a policy's targets.
 * Throws if the policy points at a field that is missing, or is not a singular string
 * reached through singular message fields — call it for every method at start-up to
 * fail fast.
 */
export function resourcePathsOf(method: DescMethod): readonly ResourcePath[] {
  const cached = pathCache.get(method);
  if (cached) return cached;
  const policy = policyOf(method);
  const paths: ResourcePath[] = [];
  if (policy && policy.resourceField !== '') paths.push(compilePath(method, policy.resourceKind, policy.resourceField, 'resource_field', false));
  for (const other of policy?.otherResources ?? []) paths.push(compilePath(method, other.kind, other.field, 'other_resources', true));
  const frozen = Object.freeze(paths);
  pathCache.set(method, frozen);
  return frozen;
}

export function valueAt(method: DescMethod, request: Message, path: ResourcePath): string {
  const name = leafValue(method, request, path.fields);
  return typeof name === 'string' ? name : '';
}

/**
 * Every resource a request names, for RBAC: its `resource_field` (e.g. `dataset.pool`
 * → `{ kind: 'pool', name: request.dataset.pool }`) unless unset or empty — an empty
 * value there means "the collection" or "the caller" (ListVolumes without a pool
 * filter, CreateApiKey for oneself), which handlers filter by scope — and each of its
 * `other_resources`, empty or not.
 */
export function resourcesOf(method: DescMethod, request: Message): ResourceRef[] {
  return resourcePathsOf(method).flatMap((path) => {
    const name = valueAt(method, request, path);
    return name !== '' || path.checkEmpty ? [{ kind: path.kind, name }] : [];
  });
}

/** The first resource a request names (for audit records), if any. */
export function resourceOf(method: DescMethod, request: Message): ResourceRef | undefined {
  return resourcesOf(method, request).find((resource) => resource.name !== '');
}

// ---------------------------------------------------------------------------
// The audit object (`audit_object`): a template of request-field paths, compiled once.

type AuditObjectPart = string | readonly DescField[];
const auditObjectCache = new WeakMap<DescMethod, readonly AuditObjectPart[] | null>();
const PLACEHOLDER = /\{([a-z0-9_.]+)\}/g;

function auditObjectTemplateOf(method: DescMethod): readonly AuditObjectPart[] | undefined {
  let cached = auditObjectCache.get(method);
  if (cached === undefined) {
    const policy = policyOf(method);
    const template = policy?.auditObject ?? '';
    const where = `${method.parent.typeName}.${method.name}: audit_object "${template}"`;
    if (template !== '' && policy?.resourceField === '') throw new Error(`${where}: needs a resource_field`);
    const parts: AuditObjectPart[] = [];
    let at = 0;
    for (const match of template.matchAll(PLACEHOLDER)) {
      if (match.index > at) parts.push(template.slice(at, match.index));
      parts.push(compileFieldPath(method, match[1] ?? '', where, [ScalarType.STRING], 'string or repeated string', true));
      at = match.index + match[0].length;
    }
    if (at < template.length) parts.push(template.slice(at));
    // A brace left in the text is a placeholder that is not a dotted field path.
    if (parts.some((part) => typeof part === 'string' && /[{}]/.test(part))) {
      throw new Error(`${where}: a placeholder is not a dotted field path in braces`);
    }
    cached = template === '' ? null : parts;
    auditObjectCache.set(method, cached);
  }
  return cached ?? undefined;
}

/**
 * What the audit record names as the call's object: the RPC's `audit_object` template
 * rendered from the request when it declares one and its target resource is set, else the
 * target resource as "kind:name", else undefined.
 */
export function auditObjectOf(method: DescMethod, request: Message): string | undefined {
  const template = auditObjectTemplateOf(method);
  // A template implies a resource_field, whose compiled path comes first.
  const target = template && resourcePathsOf(method)[0];
  if (template && target && valueAt(method, request, target) !== '') {
    return template
      .map((part) => {
        if (typeof part === 'string') return part;
        const value = leafValue(method, request, part);
        return Array.isArray(value) ? value.join(',') : typeof value === 'string' ? value : '';
      })
      .join('');
  }
  const resource = resourceOf(method, request);
  return resource && `${resource.kind}:${resource.name}`;
}
