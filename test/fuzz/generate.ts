// Request generators for the RPC fuzz suite, driven by the protoc-gen-es descriptors: any method's
// request message, field by field, with near-valid values (names that exist on the fixture
// backends, small sizes, ids seen in earlier replies) so calls get deep into handlers, hostile
// values (control, C1, separator and bidi characters, option-like and traversal text, shell
// metacharacters, edge numbers, out-of-range enums, oversize text and lists), and raw bodies
// that do not decode.
import { create, toBinary, ScalarType, type DescField, type DescMessage, type DescMethod } from '@bufbuild/protobuf';
import { DurationSchema } from '@bufbuild/protobuf/wkt';
import fc from 'fast-check';

/** Names of things that exist (or plausibly exist) in the suite's fixture, and ids learned from replies. */
export interface FuzzContext {
  readonly vmNames: readonly string[];
  readonly vg: string;
  readonly cephPool: string;
  readonly volumes: readonly string[];
  readonly snapshots: readonly string[];
  readonly principals: readonly string[];
  readonly hostnames: readonly string[];
  readonly imagePaths: readonly string[];
  /** Grows during the run: ids read from replies (operation ids, key ids). */
  readonly learned: { operationIds: string[]; keyIds: string[] };
}

export type FuzzBody =
  | { readonly kind: 'message'; readonly init: Record<string, unknown>; readonly bytes: Uint8Array }
  | { readonly kind: 'raw'; readonly how: string; readonly bytes: Uint8Array; readonly init?: Record<string, unknown> };

export interface FuzzCall {
  readonly method: DescMethod;
  readonly asAdmin: boolean;
  readonly body: FuzzBody;
}

const MIB = 1024n * 1024n;

/** Text every validator must refuse somewhere, and text that tools would misread. */
export const HOSTILE_STRINGS: readonly string[] = [
  '-x;id', '--help', '-zq', '--zz-fuzz=1', '-', '--', '../../etc/passwd', '..', '.', '/', '/etc/passwd', 'a/../b',
  '', ' ', ' lead', 'trail ', 'a b', 'a\tb', 'a\nb', 'a\rb', 'a\0b', '\0', '\x1b[2J', '\x7f', '\u0085', '\u009b31m',
  '\u2028', '\u2029', '\u202e', '\u2066x\u2069', '\u200e', '\u061c', '\ud800', '\udfff', '\ufeff', '\u200b',
  '$(id)', '`id`', 'a;b', 'a|b', 'a&b', '>x', '<x', '*', '?', '[', '{a,b}', '~', '%s%n', "'", '"', '\\', 'a=b',
  'rbd:pool/x', 'pool/img@snap', 'x:conf=/etc/ceph/ceph.conf', 'snapshot1', 'pvmove0', 'v_tmeta', '\u0430dmin',
  '\uff0dx', '😀', 'A'.repeat(127), 'A'.repeat(128), 'a'.repeat(257), 'x'.repeat(4097),
];

/** Option-like hostile text: the argv check proves none reached a command as an option. */
export const OPTION_LIKE = HOSTILE_STRINGS.filter((s) => s.startsWith('-'));

const pick = <T>(list: readonly T[]) => fc.constantFrom(...list);

/** A hostile value: a listed one, one glued to a valid name, random Unicode (lone surrogates too), or oversize. */
function hostileString(valid: fc.Arbitrary<string>): fc.Arbitrary<string> {
  return fc.oneof(
    { arbitrary: pick(HOSTILE_STRINGS), weight: 6 },
    { arbitrary: fc.tuple(valid, pick(HOSTILE_STRINGS)).map(([v, h]) => v + h), weight: 2 },
    { arbitrary: fc.tuple(pick(HOSTILE_STRINGS), valid).map(([h, v]) => h + v), weight: 2 },
    { arbitrary: fc.string({ unit: 'binary', maxLength: 24 }), weight: 2 },
    { arbitrary: fc.string({ unit: 'grapheme-ascii', maxLength: 24 }), weight: 2 },
    { arbitrary: fc.constantFrom(1024, 8192, 65_536).map((n) => 'z'.repeat(n)), weight: 1 },
  );
}

/** Plausible values for a string field, chosen by its name. */
function nearValidString(field: DescField, ctx: FuzzContext): fc.Arbitrary<string> {
  const learned = (list: () => string[], fallback: string) => fc.nat().map((i) => list()[i % Math.max(1, list().length)] ?? fallback);
  const names = (extra: readonly string[]) => pick([...extra, 'fuzz-a', 'fuzz-b', 'x1']);
  switch (field.name) {
    case 'vm_name':
      return names([...ctx.vmNames, 'no-such-vm']);
    case 'snapshot_name':
    case 'snapshot':
    case 'template_snapshot':
      return names([...ctx.snapshots, 'base']);
    case 'snapshot_names':
      return names(ctx.snapshots);
    case 'pool':
    case 'template_pool':
    case 'target_pool':
      return pick([ctx.vg, ctx.cephPool, ctx.cephPool, ctx.cephPool, 'no-such-pool']);
    case 'name':
      // Role.name and VolumeRef.name: both kinds of names.
      return field.parent.typeName.endsWith('Role') ? pick(['admin', 'viewer', 'operator', 'fuzz-role', 'no-role']) : names(ctx.volumes);
    case 'image':
    case 'template_image':
    case 'target_image':
      return names(ctx.volumes);
    case 'role_name':
      return pick(['admin', 'viewer', 'operator', 'developer', 'monitor', 'fuzz-role', 'no-such-role']);
    case 'principal':
    case 'owner':
      return pick([...ctx.principals, 'user:alice', '']);
    case 'subject':
      return pick(['127.0.0.1', '::1', ...ctx.principals]);
    case 'permissions':
    case 'deny_permissions':
      return pick(['*', 'vm:list', 'vm:*', 'storage:*', 'node:heartbeat', 'access:quota:get', 'storage:volume:create', '*:list']);
    case 'glob':
    case 'name_glob':
      return pick(['*', 'web-*', 'fuzz-?', 'vm1', '']);
    case 'allowed_cidrs':
      return pick(['127.0.0.0/8', '::1/128', '10.0.0.0/24', '0.0.0.0/0']);
    case 'hostname':
    case 'source_node':
    case 'target_node':
    case 'failed_node':
      return pick(ctx.hostnames);
    case 'ip':
      return pick(['10.0.0.1', '192.168.1.20', '::1', 'fe80::1']);
    case 'node_id':
      return pick(['', 'node-1']);
    case 'image_path':
      return pick(ctx.imagePaths);
    case 'operation_id':
      return fc.oneof({ arbitrary: learned(() => ctx.learned.operationIds, 'no-such-op'), weight: 4 }, { arbitrary: fc.uuid(), weight: 1 });
    case 'key_id':
      return fc.oneof({ arbitrary: learned(() => ctx.learned.keyIds, 'no-such-key'), weight: 4 }, { arbitrary: pick(['k-1', 'no-such-key']), weight: 1 });
    case 'request_id':
      // A small pool, so a request_id is reused (with the same or other parameters) now and then.
      return fc.oneof({ arbitrary: fc.constant(''), weight: 3 }, { arbitrary: fc.uuid(), weight: 3 }, { arbitrary: pick(['11111111-1111-4111-8111-111111111111', 'fuzz-retry-1']), weight: 1 });
    case 'page_token':
      return pick(['', 'AAAA', 'eyJ4IjoxfQ', '!!']);
    case 'description':
    case 'label':
      return fc.oneof(pick(['', 'nightly', 'before upgrade', 'ümlaut ✓']), fc.string({ maxLength: 40 }));
    default:
      return fc.oneof(pick(['', 'z1', 'rack-1', '1.2.3']), fc.string({ unit: 'grapheme-ascii', maxLength: 12 }));
  }
}

function stringArb(field: DescField, ctx: FuzzContext, hostility: number): fc.Arbitrary<string> {
  const valid = nearValidString(field, ctx);
  return fc.oneof({ arbitrary: valid, weight: 100 - hostility }, { arbitrary: hostileString(valid), weight: hostility });
}

function integerArb(scalar: ScalarType, fieldName: string, hostility: number): fc.Arbitrary<number | bigint> {
  const near = (arb: fc.Arbitrary<number | bigint>, edges: fc.Arbitrary<number | bigint>) =>
    fc.oneof({ arbitrary: arb, weight: 100 - hostility }, { arbitrary: edges, weight: hostility });
  switch (scalar) {
    case ScalarType.INT32:
    case ScalarType.SINT32:
    case ScalarType.SFIXED32:
      return near(fc.integer({ min: 0, max: 100 }), fc.oneof(pick([-1, -(2 ** 31), 2 ** 31 - 1, 1001]), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 })));
    case ScalarType.UINT32:
    case ScalarType.FIXED32:
      return near(fc.integer({ min: 0, max: 30 }), fc.oneof(pick([2 ** 32 - 1, 2 ** 31]), fc.integer({ min: 0, max: 2 ** 32 - 1 })));
    case ScalarType.INT64:
    case ScalarType.SINT64:
    case ScalarType.SFIXED64:
      return near(fc.bigInt({ min: 0n, max: 100n }), fc.oneof(pick([-1n, -(2n ** 63n), 2n ** 63n - 1n]), fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n })));
    default: {
      // uint64: sizes and limits. Small sizes keep the fixture's VG and Ceph from filling up.
      const small = /size|bytes/.test(fieldName) ? fc.integer({ min: 1, max: 48 }).map((n) => BigInt(n) * MIB) : fc.bigInt({ min: 0n, max: 200n });
      return near(small, fc.oneof(pick([0n, 1n, 511n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n, 1024n ** 5n]), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })));
    }
  }
}

function scalarArb(field: DescField, scalar: ScalarType, ctx: FuzzContext, hostility: number): fc.Arbitrary<unknown> {
  switch (scalar) {
    case ScalarType.STRING:
      return stringArb(field, ctx, hostility);
    case ScalarType.BOOL:
      return fc.boolean();
    case ScalarType.BYTES:
      return fc.uint8Array({ maxLength: 32 });
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return fc.oneof(
        { arbitrary: fc.double({ min: 0, max: 100, noNaN: true }), weight: 100 - hostility },
        { arbitrary: fc.oneof(pick([Number.NaN, Infinity, -Infinity, -0, -1, 101, 1e308]), fc.double()), weight: hostility },
      );
    default:
      return integerArb(scalar, field.name, hostility);
  }
}

function enumArb(values: readonly { number: number }[], hostility: number): fc.Arbitrary<number> {
  return fc.oneof({ arbitrary: pick(values.map((v) => v.number)), weight: 100 - Math.ceil(hostility / 2) }, { arbitrary: pick([-1, 99, 2 ** 31 - 1]), weight: Math.ceil(hostility / 2) });
}

function durationArb(hostility: number): fc.Arbitrary<Record<string, unknown>> {
  return fc.oneof(
    { arbitrary: fc.record({ seconds: fc.bigInt({ min: 0n, max: 2n }), nanos: fc.integer({ min: 0, max: 999_999_999 }) }), weight: 100 - hostility },
    {
      arbitrary: pick([
        { seconds: -1n, nanos: 0 },
        { seconds: 0n, nanos: -1 },
        { seconds: 1n, nanos: -1 },
        { seconds: 0n, nanos: 2_000_000_000 },
        { seconds: 315_576_000_001n, nanos: 0 },
        { seconds: 2n ** 63n - 1n, nanos: 999_999_999 },
        { seconds: 3600n * 24n * 365n, nanos: 0 },
      ]),
      weight: hostility,
    },
  );
}

function fieldArb(field: DescField, ctx: FuzzContext, hostility: number, depth: number): fc.Arbitrary<unknown> {
  switch (field.fieldKind) {
    case 'scalar':
      return scalarArb(field, field.scalar, ctx, hostility);
    case 'enum':
      return enumArb(field.enum.values, hostility);
    case 'message':
      return messageInitArb(field.message, ctx, hostility, depth + 1);
    case 'list': {
      const item =
        field.listKind === 'scalar' ? scalarArb(field, field.scalar, ctx, hostility)
        : field.listKind === 'enum' ? enumArb(field.enum.values, hostility)
        : messageInitArb(field.message, ctx, hostility, depth + 1);
      return fc.oneof({ arbitrary: fc.array(item, { maxLength: 4 }), weight: 100 - hostility }, { arbitrary: fc.array(item, { minLength: 5, maxLength: 300 }), weight: Math.ceil(hostility / 4) });
    }
    case 'map': {
      const key = fc.oneof({ arbitrary: pick(['env', 'os', 'team', 'a.b-c_d']), weight: 100 - hostility }, { arbitrary: hostileString(pick(['env'])), weight: hostility });
      const value =
        field.mapKind === 'scalar' ? scalarArb(field, field.scalar, ctx, hostility)
        : field.mapKind === 'enum' ? enumArb(field.enum.values, hostility)
        : messageInitArb(field.message, ctx, hostility, depth + 1);
      return fc.oneof({ arbitrary: fc.dictionary(key, value, { maxKeys: 3 }), weight: 100 - hostility }, { arbitrary: fc.dictionary(fc.string({ maxLength: 12 }), value, { minKeys: 20, maxKeys: 80 }), weight: Math.ceil(hostility / 4) });
    }
  }
}

/** An init object for `create(desc, init)`: each field present most of the time. */
export function messageInitArb(desc: DescMessage, ctx: FuzzContext, hostility: number, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  if (desc.typeName === DurationSchema.typeName) return durationArb(hostility);
  if (depth > 3) return fc.constant({});
  const fields = desc.fields.map((field) => fc.option(fieldArb(field, ctx, hostility, depth), { freq: 6, nil: undefined }).map((value) => [field.localName, value] as const));
  const init = fc.tuple(...fields).map((entries) => Object.fromEntries(entries.filter(([, value]) => value !== undefined)));
  const backend = desc.fields.find((f) => f.name === 'backend');
  if (backend?.fieldKind !== 'enum' || !desc.fields.some((f) => f.name === 'pool')) return init;
  // A backend and a pool that belong together (VolumeRef, ListVolumes), most of the time: calls get past the pool check.
  const rbd = backend.enum.values.find((v) => v.name.endsWith('RBD'))?.number;
  const lvm = backend.enum.values.find((v) => v.name.endsWith('LVM'))?.number;
  return fc.tuple(init, fc.nat(99)).map(([value, roll]) => {
    if (roll >= 100 - hostility) return value;
    return roll % 2 === 0 ? { ...value, backend: rbd, pool: ctx.cephPool } : { ...value, backend: lvm, pool: ctx.vg };
  });
}

/** A body that should not decode: random bytes, a cut-off or corrupted encoding, a bad tag after a good one. */
function rawBodyArb(method: DescMethod, ctx: FuzzContext): fc.Arbitrary<FuzzBody> {
  const encoded = messageInitArb(method.input, ctx, 10).map((init) => ({ init, bytes: toBinary(method.input, create(method.input, init)) }));
  return fc.oneof(
    fc.uint8Array({ minLength: 1, maxLength: 64 }).map((bytes) => ({ kind: 'raw' as const, how: 'random bytes', bytes })),
    fc.tuple(encoded, fc.nat()).map(([{ init, bytes }, n]) => ({ kind: 'raw' as const, how: 'truncated', init, bytes: bytes.subarray(0, bytes.length === 0 ? 0 : n % bytes.length) })),
    fc.tuple(encoded, fc.nat(), fc.integer({ min: 0, max: 255 })).map(([{ init, bytes }, n, b]) => {
      const copy = Uint8Array.from(bytes.length === 0 ? [0x0a] : bytes);
      copy[n % copy.length] = b;
      return { kind: 'raw' as const, how: 'one byte changed', init, bytes: copy };
    }),
    encoded.map(({ init, bytes }) => ({ kind: 'raw' as const, how: 'truncated field appended', init, bytes: Uint8Array.from([...bytes, 0x0a, 0x05, 0x61, 0x62]) })),
    encoded.map(({ init, bytes }) => ({ kind: 'raw' as const, how: 'invalid UTF-8 in field 1', init, bytes: Uint8Array.from([...bytes, 0x0a, 0x02, 0xc3, 0x28]) })),
  );
}

/** One call: mostly near-valid messages, some hostile, some undecodable; mostly as the admin. */
export function callArb(methods: readonly DescMethod[], ctx: FuzzContext): fc.Arbitrary<FuzzCall> {
  return fc.tuple(pick(methods), fc.nat(99)).chain(([method, roll]) => {
    const message = (hostility: number) =>
      messageInitArb(method.input, ctx, hostility).map((init): FuzzBody => ({ kind: 'message', init, bytes: toBinary(method.input, create(method.input, init)) }));
    const body = roll < 65 ? message(4) : roll < 92 ? message(45) : rawBodyArb(method, ctx);
    return fc.record({ method: fc.constant(method), asAdmin: fc.nat(99).map((n) => n < 85), body });
  });
}

/** Every string in an init object (values, list items, map keys), for the argv check. */
export function stringsOf(value: unknown, out: Set<string>): Set<string> {
  if (typeof value === 'string') out.add(value);
  else if (Array.isArray(value)) for (const item of value) stringsOf(item, out);
  else if (typeof value === 'object' && value !== null && !(value instanceof Uint8Array)) {
    for (const [key, item] of Object.entries(value)) {
      out.add(key);
      stringsOf(item, out);
    }
  }
  return out;
}

/** A short, printable rendering of a call for failure reports (bigints as strings, long text cut). */
export function describeCall(call: FuzzCall): string {
  const path = `${call.method.parent.name}/${call.method.name}`;
  const who = call.asAdmin ? 'admin' : 'no-role principal';
  const render = (v: unknown) =>
    JSON.stringify(v, (_key, value: unknown) =>
      typeof value === 'bigint' ? `${value}n`
      : typeof value === 'string' && value.length > 80 ? `${value.slice(0, 40)}…(${value.length} chars)`
      : value instanceof Uint8Array ? Buffer.from(value).toString('hex')
      : value,
    );
  const body = call.body.kind === 'message' ? render(call.body.init) : `${call.body.how}: ${Buffer.from(call.body.bytes).toString('hex').slice(0, 200)}`;
  return `${path} as ${who}: ${body}`;
}
