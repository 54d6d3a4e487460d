// Step 4b (after audit): request text within bounds before anything else records or uses it.
// Every string field of a request declares its maximum UTF-8 length in the proto
// (`(debvisor.v1.max_bytes)`, else DEFAULT_MAX_BYTES); repeated strings count per element,
// maps per key and per value, nested messages field by field. More is INVALID_ARGUMENT
// naming the field path, never quoting the value. The bounds are compiled once per method at
// start-up; a declaration above what the field may hold fails the start. The audit log caps
// what it writes as well (src/audit/caps.ts), but refusing here keeps oversize values out of
// rate limiting, RBAC, request_id lookups and handlers.
import { getOption, hasOption, ScalarType, type DescField, type DescMessage, type DescMethod, type Message } from '@bufbuild/protobuf';
import { reflect, type ReflectList, type ReflectMap, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import type { CompiledPolicy, PolicyIndex } from '../rpc/policy.js';
import { max_bytes } from '../gen/debvisor/v1/options_pb.js';
import { InvalidArgumentError } from '../rpc/errors.js';
import type { Step } from './step.js';

/** A string field that declares no max_bytes. */
export const DEFAULT_MAX_BYTES = 256;
/** A field naming a target resource (the audit record's `object` cap, src/audit/caps.ts). */
export const MAX_RESOURCE_NAME_BYTES = 256;
/** No field declares more (the audit log's cap on a request field). */
export const MAX_DECLARED_BYTES = 4096;

export interface BoundsDeps {
  readonly methods: PolicyIndex;
}

/** One field of a message to check: its byte bound if it holds strings, its plan if it holds messages. */
interface FieldCheck {
  readonly field: DescField;
  readonly maxBytes: number;
  readonly nested: MessagePlan | undefined;
}

/** The checks of one message type (shared by reference where a type nests itself). */
interface MessagePlan {
  readonly checks: FieldCheck[];
}

/** UTF-8 length, counted only when the string could be over `max` (at most 3 bytes per UTF-16 unit). */
function overBytes(value: string, max: number): boolean {
  return value.length > max || (value.length * 3 > max && Buffer.byteLength(value, 'utf8') > max);
}

function tooLong(path: string, max: number): InvalidArgumentError {
  return new InvalidArgumentError(path, `must be at most ${max} bytes`);
}

/** Whether the field holds strings itself: a string, a list of strings, or a map with string keys or values. */
function holdsStringsItself(field: DescField): boolean {
  if (field.fieldKind === 'scalar' || field.fieldKind === 'list') return field.scalar === ScalarType.STRING;
  if (field.fieldKind === 'map') return field.mapKey === ScalarType.STRING || field.scalar === ScalarType.STRING;
  return false;
}

/** The field's declared bound, checked against what it may declare. */
export function declaredMaxBytes(field: DescField, targets: ReadonlySet<DescField> = new Set()): number {
  const declared = hasOption(field, max_bytes) ? getOption(field, max_bytes) : DEFAULT_MAX_BYTES;
  const ceiling = targets.has(field) ? MAX_RESOURCE_NAME_BYTES : MAX_DECLARED_BYTES;
  if (declared < 1 || declared > ceiling) throw new Error(`${field.parent.typeName}.${field.name}: max_bytes must be 1..${ceiling}, not ${declared}`);
  return declared;
}

/** The checks of `message`, or undefined when it can hold no string anywhere. */
function planOf(message: DescMessage, targets: ReadonlySet<DescField>, plans: Map<DescMessage, MessagePlan | undefined>): MessagePlan | undefined {
  if (plans.has(message)) return plans.get(message);
  const plan: MessagePlan = { checks: [] };
  // Set before recursing, so a type that contains itself reuses this plan.
  plans.set(message, plan);
  for (const field of message.fields) {
    const nested = field.message ? planOf(field.message, targets, plans) : undefined;
    const strings = holdsStringsItself(field);
    if (strings || nested) plan.checks.push({ field, maxBytes: strings ? declaredMaxBytes(field, targets) : 0, nested });
  }
  if (plan.checks.length === 0) {
    plans.set(message, undefined);
    return undefined;
  }
  return plan;
}

/** The checks of a method's request: the resource-naming fields get their cap, every other string its declared one. */
function requestPlan(policy: CompiledPolicy): MessagePlan | undefined {
  const targets = new Set<DescField>();
  for (const target of policy.targets) {
    const leaf = target.fields[target.fields.length - 1];
    if (leaf) targets.add(leaf);
  }
  return planOf(policy.method.input, targets, new Map());
}

/** A map key in a field path: quoted when short and plain, else elided (the message never echoes a value). */
function keyPath(path: string, key: unknown): string {
  const text = String(key);
  return /^[\w.:/-]{1,64}$/.test(text) ? `${path}[${JSON.stringify(text)}]` : `${path}[…]`;
}

function checkMessage(r: ReflectMessage, prefix: string, plan: MessagePlan): void {
  for (const { field, maxBytes, nested } of plan.checks) {
    if (!r.isSet(field)) continue;
    const path = `${prefix}${field.name}`;
    switch (field.fieldKind) {
      case 'scalar':
        if (overBytes(r.get(field) as string, maxBytes)) throw tooLong(path, maxBytes);
        break;
      case 'message':
        if (nested) checkMessage(r.get(field), `${path}.`, nested);
        break;
      case 'list': {
        const list: ReflectList = r.get(field);
        for (let i = 0; i < list.size; i++) {
          if (nested) checkMessage(list.get(i) as ReflectMessage, `${path}[${i}].`, nested);
          else if (overBytes(list.get(i) as string, maxBytes)) throw tooLong(`${path}[${i}]`, maxBytes);
        }
        break;
      }
      case 'map': {
        const map: ReflectMap = r.get(field);
        for (const [key, value] of map) {
          if (typeof key === 'string' && overBytes(key, maxBytes)) throw new InvalidArgumentError(path, `each key must be at most ${maxBytes} bytes`);
          if (nested) checkMessage(value as ReflectMessage, `${keyPath(path, key)}.`, nested);
          else if (typeof value === 'string' && overBytes(value, maxBytes)) throw tooLong(keyPath(path, key), maxBytes);
        }
        break;
      }
      default:
        break;
    }
  }
}

/** Throws INVALID_ARGUMENT naming the first field of `request` over its bound. */
function checkBounds(method: DescMethod, plan: MessagePlan, request: Message): void {
  checkMessage(reflect(method.input, request), '', plan);
}

export function bounds(deps: BoundsDeps): Step {
  // Worked out once: the checks of each method's request (none for those that hold no strings).
  const plans = new Map<string, { method: DescMethod; plan: MessagePlan }>();
  for (const [path, policy] of deps.methods) {
    const plan = requestPlan(policy);
    if (plan) plans.set(path, { method: policy.method, plan });
  }
  return {
    onMessage: (_state, { path }, message) => {
      const entry = plans.get(path);
      if (entry) checkBounds(entry.method, entry.plan, message as Message);
    },
  };
}
