// End-to-end, one daemon (embedded store) and one libvirtd (test driver): every string field
// of every RPC, found from the descriptors, refuses 64 KiB with a short INVALID_ARGUMENT
// naming the field, while calls in flight on the same channel carry on; and a request_id
// never replays a reply for a request that is different or fails validation.
import { create, ScalarType, toBinary, type DescMessage, type DescMethod } from '@bufbuild/protobuf';
import { Metadata, status as Status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { clientFor, rawClientFor, rawUnary, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { defineTestDomain, startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { rejection } from '../support/security.js';

const HUGE = 'x'.repeat(65_536);
const T = { timeoutMs: 60_000 };
const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';

let lv: TestLibvirt;
let daemon: RunningDaemon;
const closers: { close(): void }[] = [];

beforeAll(async () => {
  lv = await startLibvirt();
  await defineTestDomain(lv, 'fuzzvm1', '000000000101');
  await defineTestDomain(lv, 'fuzzvm2', '000000000102');
  daemon = await startDaemon({
    env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri },
    // Every RPC is called at once, some at a high declared cost: the admin's budget must not be what refuses them.
    config: { rate_limit: { per_role_per_minute: { admin: 1_000_000 }, default_per_minute: 1_000_000, global_per_minute: 10_000_000 } },
  });
});

afterAll(async () => {
  for (const client of closers) client.close();
  // Undefined when beforeAll failed half-way.
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await (lv as TestLibvirt | undefined)?.stop();
});

/** A request with one oversize string somewhere, and the field path the refusal must name. */
interface OversizeCase {
  readonly method: DescMethod;
  readonly field: string;
  readonly init: Record<string, unknown>;
}

/**
 * One init object per string in `message` (nested, repeated and map ones too), holding 64 KiB
 * there and nothing else, with the path the error names: `a.b`, `list[0]`, `map["k"]`, or the
 * map itself for an oversize key. A message type nesting itself is followed once.
 */
function oversize(message: DescMessage, prefix = '', seen: readonly DescMessage[] = []): { field: string; init: Record<string, unknown> }[] {
  if (seen.includes(message)) return [];
  const within = [...seen, message];
  return message.fields.flatMap((field) => {
    const path = `${prefix}${field.name}`;
    // A oneof member (CreateVm's disk source, UploadImage's header) is set through its oneof: { source: { case: 'volume', value } }.
    const at = (value: unknown) => (field.oneof ? { [field.oneof.localName]: { case: field.localName, value } } : { [field.localName]: value });
    const nested = (inner: string) => (field.message ? oversize(field.message, inner, within) : []);
    switch (field.fieldKind) {
      case 'scalar':
        return field.scalar === ScalarType.STRING ? [{ field: path, init: at(HUGE) }] : [];
      case 'message':
        return nested(`${path}.`).map((c) => ({ field: c.field, init: at(c.init) }));
      case 'list':
        if (field.listKind === 'scalar') return field.scalar === ScalarType.STRING ? [{ field: `${path}[0]`, init: at([HUGE]) }] : [];
        return field.listKind === 'message' ? nested(`${path}[0].`).map((c) => ({ field: c.field, init: at([c.init]) })) : [];
      case 'map': {
        const keys = field.mapKey === ScalarType.STRING ? [{ field: path, init: at({ [HUGE]: field.mapKind === 'scalar' ? '' : {} }) }] : [];
        if (field.mapKind === 'message') return [...keys, ...nested(`${path}["k"].`).map((c) => ({ field: c.field, init: at({ k: c.init }) }))];
        return field.mapKind === 'scalar' && field.scalar === ScalarType.STRING ? [...keys, { field: `${path}["k"]`, init: at({ k: HUGE }) }] : keys;
      }
      default:
        return [];
    }
  });
}

const CASES: OversizeCase[] = API_SERVICES.flatMap((service) => service.methods).flatMap((method) => oversize(method.input).map((c) => ({ method, ...c })));

interface Outcome {
  readonly code: Status;
  readonly details: string;
  readonly traceId: string | undefined;
}

function outcomeOf(err: ServiceError | undefined): Outcome {
  if (!err) return { code: Status.OK, details: '', traceId: undefined };
  const traceId = err.metadata.get('x-request-id')[0];
  return { code: err.code, details: err.details, traceId: typeof traceId === 'string' ? traceId : undefined };
}

/** One call of `method` with `body`, unary, client- or server-streaming, to its final status. */
async function call(client: Client, method: DescMethod, body: Buffer): Promise<Outcome> {
  const path = `/${method.parent.typeName}/${method.name}`;
  // A client stream of one message (UploadImage's header) is a unary call on the wire.
  if (method.methodKind === 'unary' || method.methodKind === 'client_streaming') return outcomeOf((await rawUnary(client, path, body, {}, T.timeoutMs)).error);
  if (method.methodKind !== 'server_streaming') throw new Error(`${path}: a ${method.methodKind} RPC; this test sends one message`);
  return new Promise((resolveOutcome) => {
    const stream = client.makeServerStreamRequest<Buffer, Buffer>(path, (v) => v, (v) => v, body, new Metadata(), { deadline: Date.now() + T.timeoutMs });
    stream.on('data', () => undefined);
    stream.on('error', (err: ServiceError) => {
      resolveOutcome(outcomeOf(err));
    });
    stream.on('end', () => {
      resolveOutcome(outcomeOf(undefined));
    });
  });
}

describe('64 KiB in every string field of every RPC', () => {
  it('finds the fields from the descriptors: nested, repeated, map and streaming ones included', () => {
    const names = CASES.map((c) => `${c.method.name} ${c.field}`);
    expect(names).toEqual(
      expect.arrayContaining([
        'GetOperation operation_id',
        'WatchOperation operation_id',
        'ListVolumes pool',
        'CreateSnapshot dataset.pool',
        'CreateApiKey permissions[0]',
        'CreateApiKey resource_globs[0].glob',
        'PutRole role.description',
        'RegisterNode labels["k"]',
        'RegisterNode labels',
        'CreateVolume tags["k"]',
      ]),
    );
    // Every RPC whose request holds a string is covered.
    const covered = new Set(CASES.map((c) => c.method));
    const withStrings = API_SERVICES.flatMap((s) => s.methods).filter((m) => oversize(m.input).length > 0);
    expect(withStrings.filter((m) => !covered.has(m))).toEqual([]);
    expect(covered.size).toBeGreaterThan(40);
  });

  it('each is INVALID_ARGUMENT naming the field path, under 1 KiB, with a trace id; the calls in flight beside them succeed', async () => {
    const client = await rawClientFor(daemon);
    closers.push(client);
    // Everything at once on one channel: the refusals, and a WhoAmI between every two of them.
    const refusals = CASES.map((c) => call(client, c.method, Buffer.from(toBinary(c.method.input, create(c.method.input, c.init)))));
    const whoAmIs = CASES.filter((_, i) => i % 2 === 0).map(() => rawUnary(client, WHOAMI, Buffer.alloc(0), {}, T.timeoutMs));
    const outcomes = await Promise.all(refusals);

    const wrong = CASES.flatMap((c, i) => {
      const outcome = outcomes[i] as Outcome;
      const problems = [
        outcome.code !== Status.INVALID_ARGUMENT && `code ${Status[outcome.code]}`,
        !outcome.details.startsWith(`${c.field}: `) && 'does not name the field',
        Buffer.byteLength(outcome.details) > 1024 && `${Buffer.byteLength(outcome.details)} bytes`,
        (!outcome.traceId || !outcome.details.includes(`trace_id=${outcome.traceId}`)) && 'no trace id',
      ].filter(Boolean);
      return problems.length > 0 ? [`${c.method.name} ${c.field}: ${problems.join(', ')} (${outcome.details.slice(0, 120)})`] : [];
    });
    expect(wrong).toEqual([]);
    const answered = await Promise.all(whoAmIs);
    expect(answered.filter((r) => r.error !== undefined).map((r) => `${Status[r.status.code]} ${r.status.details}`)).toEqual([]);
    expect(daemon.logs()).not.toContain('panic in call');
  });
});

describe('request_id: validation runs before a kept reply is returned', () => {
  it('a reused request_id never replays for a different, invalid or oversize request; the same request gets its reply', async () => {
    const vms = await clientFor(VmService, daemon);
    closers.push(vms);
    const requestId = 'bounds-e2e-reused-1';
    const first = await vms.startVm({ vmName: 'fuzzvm1', requestId }, T);

    const other = await rejection(vms.startVm({ vmName: 'fuzzvm2', requestId }, T));
    expect(other.code).toBe(Status.INVALID_ARGUMENT);
    expect(other.details).toMatch(/^request_id: request_id reused with different parameters/);
    expect((await vms.getVm({ vmName: 'fuzzvm2' }, T)).vm?.state).not.toBe(VmState.RUNNING);

    // Invalid: refused naming its field (validation runs before the lookup), never the kept reply.
    const invalid = await rejection(vms.startVm({ vmName: '-x;id', requestId }, T));
    expect(invalid.code).toBe(Status.INVALID_ARGUMENT);
    expect(invalid.details).toMatch(/^vm_name: /);
    // Oversize: the bounds step names the field before the request_id is looked up at all.
    const huge = await rejection(vms.startVm({ vmName: HUGE, requestId }, T));
    expect(huge.code).toBe(Status.INVALID_ARGUMENT);
    expect(huge.details).toMatch(/^vm_name: must be at most 256 bytes/);

    // The same request again: its kept reply.
    expect(await vms.startVm({ vmName: 'fuzzvm1', requestId }, T)).toEqual(first);
  });

  it('an invalid request under a fresh request_id fails on its field every time: a failure keeps no reply', async () => {
    const vms = await clientFor(VmService, daemon);
    closers.push(vms);
    for (let attempt = 0; attempt < 2; attempt++) {
      const err = await rejection(vms.startVm({ vmName: '-x;id', requestId: 'bounds-e2e-invalid-1' }, T));
      expect(err.code).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toMatch(/^vm_name: /);
    }
    const access = await clientFor(AccessService, daemon);
    closers.push(access);
    expect((await access.whoAmI({}, T)).principalId).toBe(daemon.pki.adminPrincipal);
  });
});
