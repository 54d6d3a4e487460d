// Operation kinds, typed end to end: a kind is an OperationKind enum value with a zod
// schema for its params (stored as JSON in the operation record) and the member of
// Operation.result its runner fills. Launching takes the kind's params type, the runner
// receives them parsed by that schema, and it returns that result member: no casts and no
// free kind strings. The stored kind is the enum value's name (`SHUTDOWN_VM`), as daemons
// have always written it.
import { create, fromJson, toJson, type JsonValue, type MessageInitShape } from '@bufbuild/protobuf';
import { z } from 'zod';
import { OperationKind, OperationSchema, type Operation } from '../gen/debvisor/v1/operation_pb.js';

/** The Operation.result oneof as a runner gives it: `{ case: 'shutdown', value: {...} }`, or `{ case: undefined }` for none. */
export type OperationResultInit = NonNullable<MessageInitShape<typeof OperationSchema>['result']>;
/** A member of Operation.result (undefined: the kind has no result). */
export type ResultCase = OperationResultInit['case'];
/** What a runner of a kind whose result member is `C` resolves with. */
export type ResultOf<C extends ResultCase> = Extract<OperationResultInit, { case: C }>;

export interface OperationKindDefinition<P, C extends ResultCase> {
  readonly kind: OperationKind;
  /** Parses the params stored with an operation: what the runner receives. */
  readonly params: z.ZodType<P>;
  /** The member of Operation.result the runner fills. */
  readonly result: C;
}

/** Defines a kind: its enum value, the schema of its (JSON) params and its result member. */
export function defineOperationKind<P, const C extends ResultCase>(kind: OperationKind, params: z.ZodType<P>, result: C): OperationKindDefinition<P, C> {
  if (kind === OperationKind.UNSPECIFIED) throw new Error('an operation kind needs a kind');
  return Object.freeze({ kind, params, result });
}

const KIND_BY_NAME: ReadonlyMap<string, OperationKind> = new Map(
  Object.values(OperationKind)
    .filter((v): v is OperationKind => typeof v === 'number' && v !== OperationKind.UNSPECIFIED)
    .map((v) => [OperationKind[v], v]),
);

/** The name an operation record stores for a kind: the enum value's name without its prefix, `SHUTDOWN_VM`. */
export function storedKindName(kind: OperationKind): string {
  return OperationKind[kind];
}

/** The kind a record stores, or undefined for a name this daemon does not know (written by a newer one, say). */
export function kindOfStored(name: string): OperationKind | undefined {
  return KIND_BY_NAME.get(name);
}

/** How a result is stored: the Operation.result member's name and its message's protobuf JSON. */
const storedResult = z.strictObject({ case: z.string(), value: z.json() });
export type StoredResult = z.infer<typeof storedResult>;

const RESULT_MEMBERS = OperationSchema.oneofs.find((oneof) => oneof.name === 'result')?.fields ?? [];

/** The stored form of a runner's result; undefined for none. */
export function encodeResult(result: OperationResultInit): StoredResult | undefined {
  const member = RESULT_MEMBERS.find((field) => field.localName === result.case);
  if (!member) return undefined;
  const json = toJson(OperationSchema, create(OperationSchema, { result }));
  const value = json !== null && typeof json === 'object' && !Array.isArray(json) ? json[member.jsonName] : undefined;
  return value === undefined ? undefined : { case: member.localName, value };
}

/**
 * The Operation.result a record stores; undefined for none, and for a stored value that is no
 * member of Operation.result or not its message's JSON (the record is still shown, without it).
 */
export function decodeResult(stored: unknown): Operation['result'] | undefined {
  const parsed = storedResult.safeParse(stored);
  const member = parsed.success ? RESULT_MEMBERS.find((field) => field.localName === parsed.data.case) : undefined;
  if (!parsed.success || !member) return undefined;
  const json: JsonValue = { [member.jsonName]: parsed.data.value };
  try {
    return fromJson(OperationSchema, json).result;
  } catch {
    return undefined;
  }
}
