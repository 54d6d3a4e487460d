// Step 4 (before audit): request text within bounds before anything records or uses it. A name
// that targets a resource is at most 256 bytes, every other string in the request at most 4 KiB;
// more is INVALID_ARGUMENT naming the field. The audit log caps what it writes as well
// (src/audit/caps.ts), but refusing here keeps oversize values out of every later step.
import { ScalarType, type DescField, type DescMessage, type DescMethod, type Message } from '@bufbuild/protobuf';
import { reflect, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import { resourcePathsOf } from '../rpc/policy.js';
import { InvalidArgumentError } from '../rpc/errors.js';
import type { Step } from './step.js';

/** The audit log's caps (src/audit/caps.ts): a resource name, and any other request field. */
export const MAX_RESOURCE_NAME_BYTES = 256;
export const MAX_REQUEST_STRING_BYTES = 4096;

export interface BoundsDeps {
  readonly methods: ReadonlyMap<string, { readonly method: DescMethod }>;
}

/** UTF-8 length, counted only when the string could be over `max` (at most 3 bytes per UTF-16 unit). */
function overBytes(value: string, max: number): boolean {
  return value.length > max || (value.length * 3 > max && Buffer.byteLength(value, 'utf8') > max);
}

function checkStrings(r: ReflectMessage, prefix: string, resourceFields: ReadonlyMap<DescField, string>): void {
  for (const field of r.fields) {
    if (!r.isSet(field)) continue;
    const path = `${prefix}${field.name}`;
    if (field.fieldKind === 'scalar' && field.scalar === ScalarType.STRING) {
      const max = resourceFields.has(field) ? MAX_RESOURCE_NAME_BYTES : MAX_REQUEST_STRING_BYTES;
      if (overBytes(r.get(field), max)) throw new InvalidArgumentError(path, `must be at most ${max} bytes`);
    } else if (field.fieldKind === 'list' && field.listKind === 'scalar' && field.scalar === ScalarType.STRING) {
      const list = r.get(field);
      for (let i = 0; i < list.size; i++) {
        if (overBytes(list.get(i) as string, MAX_REQUEST_STRING_BYTES)) throw new InvalidArgumentError(`${path}[${i}]`, `must be at most ${MAX_REQUEST_STRING_BYTES} bytes`);
      }
    } else if (field.fieldKind === 'message') {
      checkStrings(r.get(field), `${path}.`, resourceFields);
    } else if (field.fieldKind === 'list' && field.listKind === 'message') {
      const list = r.get(field);
      for (let i = 0; i < list.size; i++) checkStrings(list.get(i) as ReflectMessage, `${path}[${i}].`, resourceFields);
    }
  }
}

/** Whether a message type can hold a string anywhere: most requests are checked, Echo-like ones cheaply. */
function holdsStrings(message: DescMessage, seen = new Set<DescMessage>()): boolean {
  if (seen.has(message)) return false;
  seen.add(message);
  return message.fields.some((field) => field.scalar === ScalarType.STRING || (field.message !== undefined && holdsStrings(field.message, seen)));
}

export function bounds(deps: BoundsDeps): Step {
  // The resource-naming leaf fields of each method, worked out once.
  const targets = new Map<DescMethod, ReadonlyMap<DescField, string>>();
  for (const { method } of deps.methods.values()) {
    if (!holdsStrings(method.input)) continue;
    const leaves = new Map<DescField, string>();
    for (const path of resourcePathsOf(method)) {
      const leaf = path.fields[path.fields.length - 1];
      if (leaf) leaves.set(leaf, leaf.name);
    }
    targets.set(method, leaves);
  }
  return {
    onMessage: (_state, { path }, message) => {
      const method = deps.methods.get(path)?.method;
      const resourceFields = method && targets.get(method);
      if (!method || !resourceFields) return;
      checkStrings(reflect(method.input, message as Message), '', resourceFields);
    },
  };
}
