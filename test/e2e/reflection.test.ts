// End-to-end: server reflection serves the descriptors buf compiles from proto/, custom options
// included, so a client (grpcurl describe) sees each RPC's (debvisor.v1.rpc_policy). The check
// decodes the reflection responses and compares every RPC's policy with a fresh `buf build`.
// grpcurl itself is not packaged by Debian (bookworm), so it is not run here.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create, createFileRegistry, fromBinary, getOption, hasOption, toBinary, type FileRegistry } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';
import { status as Status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rpc_policy } from '../../src/gen/debvisor/v1/options_pb.js';
import {
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from '../../src/gen/grpc/reflection/v1/reflection_pb.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { REPO_ROOT, rawClientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';

type RequestInit = Parameters<typeof create<typeof ServerReflectionRequestSchema>>[1];

let daemon: RunningDaemon;
let fromProto: FileRegistry;
const clients: Client[] = [];

beforeAll(async () => {
  daemon = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'rpcd-reflection-'));
  try {
    const image = join(dir, 'image.binpb');
    execFileSync('npx', ['buf', 'build', '-o', image, '--exclude-source-info'], { cwd: REPO_ROOT, stdio: 'pipe' });
    fromProto = createFileRegistry(fromBinary(FileDescriptorSetSchema, readFileSync(image)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

afterAll(async () => {
  for (const client of clients) client.close();
  await daemon.cleanup();
});

/** Sends each request on one reflection stream and collects one response per request. */
async function reflect(requests: RequestInit[], options: { identity?: null; service?: string } = {}): Promise<ServerReflectionResponse[]> {
  const client = await rawClientFor(daemon, options.identity);
  clients.push(client);
  const call = client.makeBidiStreamRequest<ServerReflectionRequest, ServerReflectionResponse>(
    `/${options.service ?? 'grpc.reflection.v1.ServerReflection'}/ServerReflectionInfo`,
    (request) => Buffer.from(toBinary(ServerReflectionRequestSchema, request)),
    (bytes) => fromBinary(ServerReflectionResponseSchema, bytes),
  );
  const responses: ServerReflectionResponse[] = [];
  return new Promise((resolve, reject) => {
    call.on('data', (response: ServerReflectionResponse) => {
      responses.push(response);
      if (responses.length === requests.length) call.end();
    });
    call.on('error', reject);
    call.on('status', () => resolve(responses));
    for (const request of requests) call.write(create(ServerReflectionRequestSchema, request));
  });
}

function filesOf(response: ServerReflectionResponse): Uint8Array[] {
  if (response.messageResponse.case !== 'fileDescriptorResponse') throw new Error(`not a file response: ${JSON.stringify(response.messageResponse)}`);
  return response.messageResponse.value.fileDescriptorProto;
}

describe('server reflection', () => {
  it('describes every RPC with the rpc_policy the proto declares', async () => {
    const [listed] = await reflect([{ messageRequest: { case: 'listServices', value: '*' } }]);
    expect(listed!.messageResponse.case).toBe('listServicesResponse');
    const names = listed!.messageResponse.case === 'listServicesResponse' ? listed!.messageResponse.value.service.map((s) => s.name) : [];
    expect(names).toEqual(expect.arrayContaining([...API_SERVICES.map((s) => s.typeName), 'grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection']));

    // As grpcurl describe does: the file containing each service symbol, with its imports.
    const responses = await reflect(API_SERVICES.map((s) => ({ messageRequest: { case: 'fileContainingSymbol' as const, value: s.typeName } })));
    const served = createFileRegistry(
      create(FileDescriptorSetSchema, {
        // Each response is the requested file, then its imports: reversed, every import comes first.
        file: [...new Map(responses.flatMap((response) => filesOf(response).toReversed()).map((bytes) => {
          const file = fromBinary(FileDescriptorProtoSchema, bytes);
          return [file.name, file] as const;
        })).values()],
      }),
    );

    let methods = 0;
    for (const service of fromProto.files) {
      if (!service.name.startsWith('debvisor/v1/')) continue;
      for (const expectedService of service.services) {
        const servedService = served.getService(expectedService.typeName);
        expect(servedService, expectedService.typeName).toBeDefined();
        for (const expected of expectedService.methods) {
          const actual = servedService!.methods.find((m) => m.name === expected.name);
          expect(actual, `${expectedService.typeName}.${expected.name}`).toBeDefined();
          expect(hasOption(actual!, rpc_policy), `${expected.name} has rpc_policy`).toBe(hasOption(expected, rpc_policy));
          const want = getOption(expected, rpc_policy);
          const got = getOption(actual!, rpc_policy);
          expect(got.permission, `${expectedService.typeName}.${expected.name} permission`).toBe(want.permission);
          expect(got, `${expectedService.typeName}.${expected.name} policy`).toEqual(want);
          methods++;
        }
      }
    }
    expect(methods).toBeGreaterThan(40);
    expect(getOption(served.getService('debvisor.v1.VmService')!.methods.find((m) => m.name === 'StartVm')!, rpc_policy).permission).toBe('vm:start');
  });

  it('serves files by name and answers an unknown symbol with NOT_FOUND, on v1 and v1alpha', async () => {
    for (const service of ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection']) {
      const [byName, unknown, enumValue, field] = await reflect(
        [
          { messageRequest: { case: 'fileByFilename', value: 'debvisor/v1/options.proto' } },
          { messageRequest: { case: 'fileContainingSymbol', value: 'debvisor.v1.NoSuchThing' } },
          { messageRequest: { case: 'fileContainingSymbol', value: 'debvisor.v1.VM_STATE_RUNNING' } },
          { messageRequest: { case: 'fileContainingSymbol', value: 'debvisor.v1.Operation.progress_percent' } },
        ],
        { service },
      );
      const files = filesOf(byName!).map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name);
      expect(files[0]).toBe('debvisor/v1/options.proto');
      expect(files).toContain('google/protobuf/descriptor.proto');
      expect(unknown!.messageResponse).toMatchObject({ case: 'errorResponse', value: { errorCode: Status.NOT_FOUND } });
      expect(fromBinary(FileDescriptorProtoSchema, filesOf(enumValue!)[0]!).name).toBe('debvisor/v1/vm.proto');
      expect(fromBinary(FileDescriptorProtoSchema, filesOf(field!)[0]!).name).toBe('debvisor/v1/operation.proto');
    }
  });

  it('answers the extension requests for the rpc_policy option', async () => {
    const [numbers, byExtension] = await reflect([
      { messageRequest: { case: 'allExtensionNumbersOfType', value: 'google.protobuf.MethodOptions' } },
      { messageRequest: { case: 'fileContainingExtension', value: { containingType: 'google.protobuf.MethodOptions', extensionNumber: 51001 } } },
    ]);
    expect(numbers!.messageResponse.case).toBe('allExtensionNumbersResponse');
    expect(numbers!.messageResponse.case === 'allExtensionNumbersResponse' && numbers!.messageResponse.value.extensionNumber).toContain(51001);
    expect(fromBinary(FileDescriptorProtoSchema, filesOf(byExtension!)[0]!).name).toBe('debvisor/v1/options.proto');
  });

  it('refuses a caller without a credential by default', async () => {
    const refused = (await reflect([{ messageRequest: { case: 'listServices', value: '*' } }], { identity: null }).then(
      () => expect.fail('reflection answered an anonymous caller'),
      (err: unknown) => err,
    )) as ServiceError;
    expect(refused.code).toBe(Status.UNAUTHENTICATED);
  });
});
