// Each RPC's policy, compiled once at start-up from its proto method options: the API is
// the one place that says what an RPC needs. RBAC, rate limiting, bounds, audit, quota,
// idempotency and the handlers all read the one CompiledPolicy of a method; nothing else
// walks the options or the request's fields by name.
import { ScalarType, getOption, hasOption, type DescField, type DescMethod, type DescService, type Message } from '@bufbuild/protobuf';
import { reflect, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import { QuotaResource, ResourceKind, rpc_policy, type RpcPolicy } from '../gen/debvisor/v1/options_pb.js';
import { OperationKind, operation_kind } from '../gen/debvisor/v1/operation_pb.js';

/** The gRPC path of a method, `/package.Service/Method`: the key every per-RPC table uses. */
export function methodPath(method: DescMethod): string {
  return `/${method.parent.typeName}/${method.name}`;
}

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

/** One request field naming a target resource (`resource_field` or one of `other_resources`). */
export interface ResourceTarget {
  readonly kind: string;
  /** The singular message fields down to the string leaf. */
  readonly fields: readonly DescField[];
  /** The dotted path as declared, e.g. `dataset.pool`. */
  readonly path: string;
  /** From `other_resources`: an empty value is checked too (the handler would pick a default). */
  readonly checkEmpty: boolean;
}

/** The quota a successful call consumes. */
export interface QuotaSpec {
  readonly resource: Exclude<QuotaResource, QuotaResource.UNSPECIFIED>;
  /** The compiled `quota_amount_field`; undefined: one unit per call. */
  readonly amountField: readonly DescField[] | undefined;
}

/** How a mutating RPC is made exactly-once under retries. */
export interface IdempotencySpec {
  /** The request's `request_id` string field (its key of kept replies). */
  readonly requestIdField: DescField;
}

type AuditObjectPart = string | readonly DescField[];

/** The field every mutating RPC's request carries as its idempotency key. */
const REQUEST_ID_FIELD = 'request_id';
const INTEGER_TYPES = [ScalarType.UINT64, ScalarType.INT64, ScalarType.UINT32, ScalarType.INT32, ScalarType.FIXED64, ScalarType.FIXED32, ScalarType.SFIXED64, ScalarType.SFIXED32, ScalarType.SINT64, ScalarType.SINT32];
const PLACEHOLDER = /\{([a-z0-9_.]+)\}/g;

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
  return Object.freeze(fields);
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

/**
 * One RPC's policy, compiled from its options: every field path resolved, every declaration
 * checked. Built only by {@link compilePolicy}, at start-up.
 */
export class CompiledPolicy {
  /** `/package.Service/Method`, as the chain sees the call. */
  readonly path: string;
  /** Required permission; empty for `any_authenticated` RPCs. */
  readonly permission: string;
  readonly anyAuthenticated: boolean;
  /** The handler acts on the caller's own objects unless the caller holds `<permission>:any`. */
  readonly ownerScoped: boolean;
  readonly mutates: boolean;
  /** Rate-limit tokens one call costs (at least 1). */
  readonly rateCost: number;
  readonly quota: QuotaSpec | undefined;
  /** `resource_field` first (if declared), then each of `other_resources`. */
  readonly targets: readonly ResourceTarget[];
  /** The operation kind the RPC may start (`(debvisor.v1.operation_kind)`). */
  readonly operationKind: OperationKind | undefined;
  /** Set for every mutating unary RPC. */
  readonly idempotency: IdempotencySpec | undefined;
  private readonly auditTemplate: readonly AuditObjectPart[] | undefined;

  /** Prefer {@link compilePolicy}, which also reads the declaration from the method. */
  constructor(
    readonly method: DescMethod,
    declared: RpcPolicy,
  ) {
    const where = `${method.parent.typeName}.${method.name}`;
    if (declared.anyAuthenticated && declared.permission !== '') throw new Error(`${where}: any_authenticated RPCs declare no permission`);
    if (declared.anyAuthenticated && declared.ownerScoped) throw new Error(`${where}: owner_scoped needs a permission`);
    this.path = methodPath(method);
    this.permission = declared.permission;
    this.anyAuthenticated = declared.anyAuthenticated;
    this.ownerScoped = declared.ownerScoped;
    this.mutates = declared.mutates;
    this.rateCost = Math.max(1, declared.rateCost);
    this.quota = compileQuota(method, where, declared);
    this.targets = compileTargets(method, where, declared);
    this.operationKind = compileOperationKind(method, where);
    this.idempotency = compileIdempotency(method, where, declared);
    this.auditTemplate = compileAuditObject(method, where, declared);
    Object.freeze(this);
  }

  /** The name at a target of `request` ('' where unset). */
  targetName(request: Message, target: ResourceTarget): string {
    const name = leafValue(this.method, request, target.fields);
    return typeof name === 'string' ? name : '';
  }

  /**
   * Every resource a request names, for RBAC: its `resource_field` (e.g. `dataset.pool`
   * → `{ kind: 'pool', name: request.dataset.pool }`) unless unset or empty — an empty
   * value there means "the collection" or "the caller" (ListVolumes without a pool
   * filter, CreateApiKey for oneself), which handlers filter by scope — and each of its
   * `other_resources`, empty or not.
   */
  resourcesOf(request: Message): ResourceRef[] {
    return this.targets.flatMap((target) => {
      const name = this.targetName(request, target);
      return name !== '' || target.checkEmpty ? [{ kind: target.kind, name }] : [];
    });
  }

  /** The first resource a request names (for audit records), if any. */
  resourceOf(request: Message): ResourceRef | undefined {
    return this.resourcesOf(request).find((resource) => resource.name !== '');
  }

  /** The quota amount a request declares through `quota_amount_field` (0 where unset), or undefined if the RPC declares none. */
  quotaAmountOf(request: Message): bigint | undefined {
    const field = this.quota?.amountField;
    if (!field) return undefined;
    const value = leafValue(this.method, request, field);
    return typeof value === 'bigint' ? value : typeof value === 'number' ? BigInt(Math.trunc(value)) : 0n;
  }

  /** The request's idempotency key ('' when absent or the RPC takes none). */
  requestIdOf(request: Message): string {
    if (!this.idempotency) return '';
    const value: unknown = reflect(this.method.input, request).get(this.idempotency.requestIdField);
    return typeof value === 'string' ? value : '';
  }

  /**
   * What the audit record names as the call's object: the RPC's `audit_object` template
   * rendered from the request when it declares one and its target resource is set, else the
   * target resource as "kind:name", else undefined.
   */
  auditObjectOf(request: Message): string | undefined {
    // A template implies a resource_field, whose target comes first.
    const target = this.auditTemplate && this.targets[0];
    if (this.auditTemplate && target && this.targetName(request, target) !== '') {
      return this.auditTemplate
        .map((part) => {
          if (typeof part === 'string') return part;
          const value = leafValue(this.method, request, part);
          return Array.isArray(value) ? value.join(',') : typeof value === 'string' ? value : '';
        })
        .join('');
    }
    const resource = this.resourceOf(request);
    return resource && `${resource.kind}:${resource.name}`;
  }
}

function compileQuota(method: DescMethod, where: string, declared: RpcPolicy): QuotaSpec | undefined {
  const dotted = declared.quotaAmountField;
  if (declared.quotaResource === QuotaResource.UNSPECIFIED) {
    if (dotted !== '') throw new Error(`${where}: quota_amount_field "${dotted}" needs a quota_resource`);
    return undefined;
  }
  const amountField = dotted === '' ? undefined : compileFieldPath(method, dotted, `${where}: quota_amount_field "${dotted}"`, INTEGER_TYPES, 'integer');
  return Object.freeze({ resource: declared.quotaResource, amountField });
}

function compileTargets(method: DescMethod, where: string, declared: RpcPolicy): readonly ResourceTarget[] {
  const target = (kindValue: ResourceKind, dotted: string, option: string, checkEmpty: boolean): ResourceTarget => {
    const at = `${where}: ${option} "${dotted}"`;
    const kind = resourceKindName(kindValue);
    if (kind === undefined) throw new Error(`${at}: no resource kind`);
    return Object.freeze({ kind, fields: compileFieldPath(method, dotted, at, [ScalarType.STRING], 'string'), path: dotted, checkEmpty });
  };
  const targets: ResourceTarget[] = [];
  if (declared.resourceField !== '') targets.push(target(declared.resourceKind, declared.resourceField, 'resource_field', false));
  for (const other of declared.otherResources) targets.push(target(other.kind, other.field, 'other_resources', true));
  return Object.freeze(targets);
}

function compileOperationKind(method: DescMethod, where: string): OperationKind | undefined {
  if (!hasOption(method, operation_kind)) return undefined;
  const kind = getOption(method, operation_kind);
  if (kind === OperationKind.UNSPECIFIED || !(kind in OperationKind)) throw new Error(`${where}: operation_kind must name a kind`);
  return kind;
}

/** A mutating unary RPC takes a `request_id` string; no other RPC does, so a retried read never waits on a key. */
function compileIdempotency(method: DescMethod, where: string, declared: RpcPolicy): IdempotencySpec | undefined {
  const field = method.input.fields.find((f) => f.name === REQUEST_ID_FIELD);
  if (!declared.mutates || method.methodKind !== 'unary') {
    if (field) throw new Error(`${where}: only a mutating unary RPC takes a ${REQUEST_ID_FIELD}`);
    return undefined;
  }
  if (field?.fieldKind !== 'scalar' || field.scalar !== ScalarType.STRING) throw new Error(`${where}: a mutating RPC takes a string ${REQUEST_ID_FIELD}`);
  return Object.freeze({ requestIdField: field });
}

function compileAuditObject(method: DescMethod, where: string, declared: RpcPolicy): readonly AuditObjectPart[] | undefined {
  const template = declared.auditObject;
  if (template === '') return undefined;
  const at = `${where}: audit_object "${template}"`;
  if (declared.resourceField === '') throw new Error(`${at}: needs a resource_field`);
  const parts: AuditObjectPart[] = [];
  let from = 0;
  for (const match of template.matchAll(PLACEHOLDER)) {
    if (match.index > from) parts.push(template.slice(from, match.index));
    parts.push(compileFieldPath(method, match[1] ?? '', at, [ScalarType.STRING], 'string or repeated string', true));
    from = match.index + match[0].length;
  }
  if (from < template.length) parts.push(template.slice(from));
  // A brace left in the text is a placeholder that is not a dotted field path.
  if (parts.some((part) => typeof part === 'string' && /[{}]/.test(part))) throw new Error(`${at}: a placeholder is not a dotted field path in braces`);
  return Object.freeze(parts);
}

/**
 * The compiled policy of a method; undefined (refused to every caller) unless it declares a
 * permission or `any_authenticated`. Throws, naming the RPC and the option, on a declaration
 * that is contradictory or names a request field that does not exist or has the wrong type.
 */
export function compilePolicy(method: DescMethod): CompiledPolicy | undefined {
  if (!hasOption(method, rpc_policy)) return undefined;
  const declared = getOption(method, rpc_policy);
  if (declared.permission === '' && !declared.anyAuthenticated) return undefined;
  return new CompiledPolicy(method, declared);
}

/** Compiled policies by method path. Unannotated methods are absent, so the RBAC step denies them. */
export type PolicyIndex = ReadonlyMap<string, CompiledPolicy>;

/** Compiles every method's policy, once, at start-up: a bad declaration fails here rather than on a call. */
export function methodIndex(services: readonly DescService[]): PolicyIndex {
  const index = new Map<string, CompiledPolicy>();
  for (const service of services) {
    for (const method of service.methods) {
      const policy = compilePolicy(method);
      if (policy) index.set(policy.path, policy);
    }
  }
  return index;
}
