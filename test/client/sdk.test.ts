// The SDK (src/client) against a real grpc-js server on loopback whose handlers fail on demand:
// a server that answers UNAVAILABLE, drops a watch mid-way or refuses with details cannot be
// made from the real daemon at a chosen moment. The wire, grpc-js and the codecs are real.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { type Metadata, Server, ServerCredentials, credentials, status as Status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AccessService, WhoAmIResponseSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { GetOperationResponseSchema, OperationSchema, OperationService, WatchOperationResponseSchema, OperationState, type Operation } from '../../src/gen/debvisor/v1/operation_pb.js';
import { RebootVmResponseSchema, VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { clientDefinition } from '../../src/client/definition.js';
import { contextCredentials, createClient, errorDetails, loadCredentials, mutates, waitForOperation, type ClientBehaviour, type Connection } from '../../src/client/index.js';
import { InvalidArgumentError, RpcError, toStatus } from '../../src/rpc/errors.js';
import { API_SERVICES } from '../../src/services/registry.js';

const FAST_RETRY: ClientBehaviour = { retry: { maxRetries: 3, initialDelayMs: 1, maxDelayMs: 5 } };

/** What the next calls of each method answer; every call is counted. */
const script = new Map<string, ((request: Record<string, unknown>) => unknown)[]>();
const calls = new Map<string, Record<string, unknown>[]>();

function record(name: string, request: Record<string, unknown>): void {
  calls.set(name, [...callsOf(name), request]);
}
let connection: Connection;
let server: Server;

function callsOf(name: string): Record<string, unknown>[] {
  return calls.get(name) ?? [];
}

function fail(code: Status, details = 'scripted failure'): never {
  throw Object.assign(new Error(details), { code, details });
}

/** The x-panel header of each call. */
const panelHeaders: unknown[][] = [];

function unary(name: string) {
  return (call: { request: Record<string, unknown>; metadata: Metadata }, callback: (err: ServiceError | null, value?: unknown) => void) => {
    record(name, call.request);
    panelHeaders.push(call.metadata.get('x-panel'));
    const next = script.get(name)?.shift();
    try {
      callback(null, next?.(call.request));
    } catch (err) {
      callback(err as ServiceError);
    }
  };
}

/** WatchOperation: writes the scripted operations, then ends (a terminal state or not). */
let watchScript: Operation[][] = [];
let getOperationAnswer: Operation | undefined;

beforeAll(async () => {
  server = new Server();
  server.addService(clientDefinition(AccessService), { WhoAmI: unary('WhoAmI') });
  server.addService(clientDefinition(VmService), { RebootVm: unary('RebootVm'), ListVms: unary('ListVms') });
  server.addService(clientDefinition(OperationService), {
    WatchOperation: (call: { write(value: unknown): void; end(): void }) => {
      record('WatchOperation', {});
      for (const operation of watchScript.shift() ?? []) call.write(create(WatchOperationResponseSchema, { operation }));
      call.end();
    },
    GetOperation: (_call: unknown, callback: (err: null, value: unknown) => void) => {
      record('GetOperation', {});
      callback(null, create(GetOperationResponseSchema, { operation: getOperationAnswer }));
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  connection = { address: `127.0.0.1:${port}`, credentials: credentials.createInsecure() };
});

afterAll(() => {
  server.forceShutdown();
});

afterEach(() => {
  script.clear();
  calls.clear();
  watchScript = [];
});

describe('retries', () => {
  it('reads the mutates flag from the proto policy', () => {
    const method = (service: typeof VmService | typeof AccessService, name: string) => service.methods.find((m) => m.name === name)!;
    expect(mutates(method(VmService, 'ListVms'))).toBe(false);
    expect(mutates(method(AccessService, 'WhoAmI'))).toBe(false);
    expect(mutates(method(VmService, 'RebootVm'))).toBe(true);
    expect(mutates(method(AccessService, 'CreateApiKey'))).toBe(true);
  });

  it('retries a read after UNAVAILABLE', async () => {
    script.set('WhoAmI', [() => fail(Status.UNAVAILABLE), () => fail(Status.UNAVAILABLE), () => create(WhoAmIResponseSchema, { principalId: 'p' })]);
    const access = createClient(AccessService, connection, FAST_RETRY);
    try {
      expect((await access.whoAmI({}, { timeoutMs: 5000 })).principalId).toBe('p');
      expect(callsOf('WhoAmI')).toHaveLength(3);
    } finally {
      access.close();
    }
  });

  it('retries a mutation only when it carries a request_id', async () => {
    const vms = createClient(VmService, connection, FAST_RETRY);
    try {
      script.set('RebootVm', [() => fail(Status.UNAVAILABLE), () => create(RebootVmResponseSchema, {})]);
      const refused = await vms.rebootVm({ vmName: 'vm1' }, { timeoutMs: 5000 }).catch((err: unknown) => err as ServiceError);
      expect(refused).toMatchObject({ code: Status.UNAVAILABLE });
      expect(callsOf('RebootVm')).toHaveLength(1);

      calls.delete('RebootVm');
      script.set('RebootVm', [() => fail(Status.UNAVAILABLE), () => create(RebootVmResponseSchema, {})]);
      await vms.rebootVm({ vmName: 'vm1', requestId: 'c9a4c5c6-0b6f-4c38-9f52-3a1c7f1c0b11' }, { timeoutMs: 5000 });
      expect(callsOf('RebootVm').map((request) => request.requestId)).toEqual(['c9a4c5c6-0b6f-4c38-9f52-3a1c7f1c0b11', 'c9a4c5c6-0b6f-4c38-9f52-3a1c7f1c0b11']);
    } finally {
      vms.close();
    }
  });

  it('does not retry other codes, and not at all without a retry policy', async () => {
    const retrying = createClient(AccessService, connection, FAST_RETRY);
    const plain = createClient(AccessService, connection);
    try {
      script.set('WhoAmI', [() => fail(Status.PERMISSION_DENIED), () => create(WhoAmIResponseSchema, {})]);
      await expect(retrying.whoAmI({}, { timeoutMs: 5000 })).rejects.toMatchObject({ code: Status.PERMISSION_DENIED });
      expect(callsOf('WhoAmI')).toHaveLength(1);
      calls.delete('WhoAmI');
      script.set('WhoAmI', [() => fail(Status.UNAVAILABLE), () => create(WhoAmIResponseSchema, {})]);
      await expect(plain.whoAmI({}, { timeoutMs: 5000 })).rejects.toMatchObject({ code: Status.UNAVAILABLE });
      expect(callsOf('WhoAmI')).toHaveLength(1);
    } finally {
      retrying.close();
      plain.close();
    }
  });

  it('sends the default metadata with every call', async () => {
    script.set('WhoAmI', [() => create(WhoAmIResponseSchema, {}), () => create(WhoAmIResponseSchema, {})]);
    panelHeaders.length = 0;
    const access = createClient(AccessService, connection, { metadata: { 'x-panel': 'a' } });
    try {
      await access.whoAmI({}, { timeoutMs: 5000 });
      await access.whoAmI({}, { timeoutMs: 5000, metadata: { 'x-panel': 'b' } });
      // grpc-js joins repeated values of one header with a comma.
      expect(panelHeaders).toEqual([['a'], ['a, b']]);
    } finally {
      access.close();
    }
  });
});

describe('waitForOperation', () => {
  const op = (state: OperationState, progressPercent: number, second: number) =>
    create(OperationSchema, { id: 'op-1', state, progressPercent, updateTime: { seconds: BigInt(second), nanos: 0 } });

  it('follows WatchOperation to the terminal state, reporting each change', async () => {
    watchScript = [[op(OperationState.PENDING, 0, 1), op(OperationState.RUNNING, 50, 2), op(OperationState.SUCCEEDED, 100, 3)]];
    const operations = createClient(OperationService, connection);
    try {
      const seen: [OperationState, number][] = [];
      const done = await waitForOperation(operations, op(OperationState.PENDING, 0, 1), { onProgress: (o) => seen.push([o.state, o.progressPercent]) });
      expect(done.state).toBe(OperationState.SUCCEEDED);
      expect(seen).toEqual([[OperationState.PENDING, 0], [OperationState.RUNNING, 50], [OperationState.SUCCEEDED, 100]]);
    } finally {
      operations.close();
    }
  });

  it('asks GetOperation and watches again when a watch ends before the end', async () => {
    watchScript = [[op(OperationState.RUNNING, 10, 2)], [op(OperationState.RUNNING, 60, 4), op(OperationState.FAILED, 60, 5)]];
    getOperationAnswer = op(OperationState.RUNNING, 40, 3);
    const operations = createClient(OperationService, connection);
    try {
      const seen: number[] = [];
      const done = await waitForOperation(operations, op(OperationState.PENDING, 0, 1), { onProgress: (o) => seen.push(o.progressPercent) });
      expect(done.state).toBe(OperationState.FAILED);
      expect(seen).toEqual([10, 40, 60, 60]);
      expect(callsOf('WatchOperation')).toHaveLength(2);
      expect(callsOf('GetOperation')).toHaveLength(1);
    } finally {
      operations.close();
    }
  });

  it('returns an operation that has already ended without a call', async () => {
    const operations = createClient(OperationService, connection);
    try {
      expect((await waitForOperation(operations, op(OperationState.CANCELLED, 0, 1))).state).toBe(OperationState.CANCELLED);
      expect(callsOf('WatchOperation')).toEqual([]);
    } finally {
      operations.close();
    }
  });
});

describe('errorDetails', () => {
  it('decodes BadRequest, QuotaFailure and RetryInfo from the trailer the daemon sends', async () => {
    const access = createClient(AccessService, connection);
    try {
      const statusOf = (err: unknown) => () => {
        const status = toStatus(err, 't');
        throw Object.assign(new Error(status.details), status);
      };
      script.set('WhoAmI', [
        statusOf(new InvalidArgumentError('spec.disks[2].size_bytes', 'must be a multiple of 512')),
        statusOf(new RpcError('RESOURCE_EXHAUSTED', 'quota', { details: { retryAfterMs: 1500, quotaViolations: [{ subject: 'principal:p/snapshots', description: 'limit 1' }] } })),
      ]);
      const bad = (await access.whoAmI({}).catch((err: unknown) => err)) as ServiceError;
      expect(errorDetails(bad)).toEqual({ retryDelayMs: undefined, quotaViolations: [], fieldViolations: [{ field: 'spec.disks[2].size_bytes', description: 'must be a multiple of 512' }] });
      const exhausted = (await access.whoAmI({}).catch((err: unknown) => err)) as ServiceError;
      expect(errorDetails(exhausted)).toEqual({ retryDelayMs: 1500, quotaViolations: [{ subject: 'principal:p/snapshots', description: 'limit 1' }], fieldViolations: [] });
    } finally {
      access.close();
    }
  });
});

describe('loadCredentials', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sdk-credentials-'));
    await writeFile(join(dir, 'ca.pem'), '');
    await writeFile(join(dir, 'api-key'), '  dvk_abc.def \n', { mode: 0o600 });
    await writeFile(join(dir, 'shared-api-key'), 'dvk_abc.def\n', { mode: 0o644 });
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('sends an API key from a file as a bearer token', async () => {
    const loaded = await loadCredentials({ ca: join(dir, 'ca.pem'), apiKeyFile: join(dir, 'api-key') });
    expect(loaded.metadata).toEqual({ authorization: 'Bearer dvk_abc.def' });
  });

  it('takes a debvisorctl context (ctl.yaml) by name or as the current one', async () => {
    const xdg = join(dir, 'xdg');
    await mkdir(join(xdg, 'debvisor'), { recursive: true });
    const contexts = ['current-context: ci', 'contexts:', '  - name: ci', '    server: h1:7443', '    ca: ca.pem', '    api-key-file: ../../api-key', '  - name: other', '    server: h2:7443', '    ca: ca.pem'];
    await writeFile(join(xdg, 'debvisor', 'ctl.yaml'), contexts.join('\n') + '\n', { mode: 0o600 });
    const current = await contextCredentials({ env: { XDG_CONFIG_HOME: xdg } });
    expect(current).toEqual({ address: 'h1:7443', context: 'ci', credentials: { ca: join(xdg, 'debvisor', 'ca.pem'), apiKeyFile: join(dir, 'api-key') } });
    expect((await contextCredentials({ name: 'other', env: { XDG_CONFIG_HOME: xdg } })).address).toBe('h2:7443');
    await expect(contextCredentials({ name: 'gone', env: { XDG_CONFIG_HOME: xdg } })).rejects.toThrow(/no context named "gone"/);
  });

  it('refuses an API key file others can read, as debvisorctl does', async () => {
    await expect(loadCredentials({ ca: join(dir, 'ca.pem'), apiKeyFile: join(dir, 'shared-api-key') })).rejects.toThrow(/readable by others: chmod 600/);
  });

  it('refuses half a pair, both kinds at once, and names a missing file', async () => {
    await expect(loadCredentials({ ca: join(dir, 'ca.pem'), cert: join(dir, 'ca.pem') })).rejects.toThrow('cert and key must be given together');
    await expect(loadCredentials({ ca: join(dir, 'ca.pem'), cert: 'c', key: 'k', apiKeyFile: join(dir, 'api-key') })).rejects.toThrow('not both');
    await expect(loadCredentials({ ca: join(dir, 'missing.pem') })).rejects.toThrow(`cannot read CA bundle ${join(dir, 'missing.pem')}: ENOENT`);
  });
});

describe('connect', () => {
  it('has a typed client for every API service', async () => {
    const { connect } = await import('../../src/client/index.js');
    const client = await connect({ address: connection.address, credentials: credentials.createInsecure() });
    try {
      const services = Object.values(client).filter((value): value is { close(): void } => typeof value === 'object');
      expect(services).toHaveLength(API_SERVICES.length);
      for (const service of API_SERVICES) {
        const typed = services.find((s) => service.methods.every((m) => typeof (s as Record<string, unknown>)[m.localName] === 'function'));
        expect(typed, service.typeName).toBeDefined();
      }
    } finally {
      client.close();
    }
  });
});
