// The API is the policy: every RPC must declare its permission in proto/, and the
// declarations must point at fields that exist.
import { describe, expect, it } from 'vitest';
import { getOption, hasOption, type DescField, type DescMessage, type DescMethod } from '@bufbuild/protobuf';
import { API_SERVICES } from '../../src/services/registry.js';
import { compilePolicy, methodIndex } from '../../src/rpc/policy.js';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { OperationKind } from '../../src/gen/debvisor/v1/operation_pb.js';
import { methodPath } from '../../src/rpc/policy.js';
import { EXEMPT_SERVICES, isExempt } from '../../src/chain/exempt.js';
import { QuotaResource, ResourceKind, rpc_policy, secret } from '../../src/gen/debvisor/v1/options_pb.js';

const methods: DescMethod[] = API_SERVICES.flatMap((service) => service.methods);
const PERMISSION = /^(\*|[a-z]+(:[a-z]+){1,2})$/;

function fieldAt(message: DescMessage, dotted: string): boolean {
  const [head = '', ...rest] = dotted.split('.');
  const field: DescField | undefined = message.fields.find((f) => f.name === head);
  if (!field) return false;
  if (rest.length === 0) return true;
  return field.fieldKind === 'message' && fieldAt(field.message, rest.join('.'));
}

describe('RPC policy options', () => {
  it('covers the eight DebVisor services', () => {
    expect(API_SERVICES.map((s) => s.typeName).sort()).toEqual(
      ['AccessService', 'EventService', 'ImageService', 'MigrationService', 'NodeService', 'OperationService', 'StorageService', 'VmService'].map((n) => `debvisor.v1.${n}`),
    );
  });

  // Default deny: a permission, or the explicit any_authenticated flag instead of one.
  it.each(methods.map((m) => [methodPath(m), m] as const))('%s declares a well-formed permission or any_authenticated', (_path, method) => {
    expect(hasOption(method, rpc_policy), 'missing (debvisor.v1.rpc_policy) option').toBe(true);
    const policy = compilePolicy(method);
    if (policy!.anyAuthenticated) expect(policy!.permission).toBe('');
    else expect(policy!.permission).toMatch(PERMISSION);
  });

  it('opens exactly WhoAmI and CreateUserSession (its handler requires impersonation) to every authenticated caller', () => {
    expect(methods.filter((m) => compilePolicy(m)!.anyAuthenticated).map(methodPath)).toEqual(['/debvisor.v1.AccessService/WhoAmI', '/debvisor.v1.AccessService/CreateUserSession']);
  });

  it('declares owner_scoped exactly where handlers check the ":any" permission', () => {
    expect(methods.filter((m) => compilePolicy(m)!.ownerScoped).map((m) => compilePolicy(m)!.permission).sort()).toEqual(
      [
        'access:apikey:create',
        'access:apikey:list',
        'access:apikey:revoke',
        'access:apikey:rotate',
        'access:quota:get',
        'access:session:list',
        'access:session:revoke',
        'operation:cancel',
        'operation:get',
        'operation:list',
        'operation:wait',
        'operation:watch',
      ],
    );
  });

  it('compiles every registered RPC’s policy, the test service’s too, and indexes it by path', () => {
    const index = methodIndex([...API_SERVICES, TestingService]);
    expect(index.size).toBe(methods.length + TestingService.methods.length);
    for (const [path, policy] of index) expect(policy.path).toBe(path);
  });

  it('marks exactly the requests that carry request_id as mutating, and compiles their idempotency', () => {
    for (const method of methods) {
      const hasRequestId = method.input.fields.some((f) => f.name === 'request_id');
      const policy = compilePolicy(method)!;
      // A client stream (UploadImage) mutates without one: its reply is not kept, the content is its identity.
      expect(policy.mutates && method.methodKind === 'unary', methodPath(method)).toBe(hasRequestId);
      expect(policy.idempotency?.requestIdField.name, methodPath(method)).toBe(hasRequestId ? 'request_id' : undefined);
    }
  });

  it('declares the operation kind of every RPC that starts an operation', () => {
    const kinds = [...methodIndex([...API_SERVICES, TestingService]).values()].flatMap((p) => (p.operationKind === undefined ? [] : [[p.method.name, OperationKind[p.operationKind]]]));
    expect(Object.fromEntries(kinds)).toEqual({
      ShutdownVm: 'SHUTDOWN_VM',
      MigrateVM: 'MIGRATE_VM',
      FailoverVM: 'FAILOVER_VM',
      ProvisionVolume: 'PROVISION_VOLUME',
      PruneSnapshots: 'PRUNE_SNAPSHOTS',
      CloneRbdFromTemplate: 'CLONE_RBD_FROM_TEMPLATE',
      CreateVm: 'CREATE_VM',
      DeleteVm: 'DELETE_VM',
      ImportImage: 'IMPORT_IMAGE',
      StartTestOperation: 'TEST',
    });
  });

  it('points resource_field and quota_amount_field at real request fields', () => {
    for (const method of methods) {
      const policy = getOption(method, rpc_policy);
      if (policy.resourceField) expect(fieldAt(method.input, policy.resourceField), `${methodPath(method)} ${policy.resourceField}`).toBe(true);
      if (policy.resourceField) expect(policy.resourceKind, methodPath(method)).not.toBe(ResourceKind.UNSPECIFIED);
      if (policy.quotaAmountField) {
        expect(policy.quotaResource, methodPath(method)).not.toBe(QuotaResource.UNSPECIFIED);
        expect(fieldAt(method.input, policy.quotaAmountField), `${methodPath(method)} ${policy.quotaAmountField}`).toBe(true);
      }
    }
  });

  it('marks API key secrets for audit redaction', () => {
    const secretFields = methods.flatMap((m) => m.output.fields.filter((f) => getOption(f, secret)).map((f) => `${m.output.name}.${f.name}`));
    expect(secretFields).toEqual(expect.arrayContaining(['CreateApiKeyResponse.secret', 'RotateApiKeyResponse.secret']));
  });
});

describe('exempt services', () => {
  it('are health and reflection only, listed in one place', () => {
    expect([...EXEMPT_SERVICES].sort()).toEqual(['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection']);
    expect(isExempt('/grpc.health.v1.Health/Check')).toBe(true);
    expect(isExempt('/debvisor.v1.AccessService/WhoAmI')).toBe(false);
    expect(isExempt('/grpc.health.v1.HealthX/Check')).toBe(false);
  });
});
