// Dotted request-field paths of a policy (src/rpc/policy.ts) are compiled once and read
// through nested messages: a nested `quota_amount_field` consumes its amount (issue 20: the
// old walker looked every segment up among the top-level fields and consumed nothing).
import { create, createFileRegistry, setExtension, type DescMethod, type Message } from '@bufbuild/protobuf';
import { FieldDescriptorProto_Label, FieldDescriptorProto_Type, FileDescriptorProtoSchema, MethodOptionsSchema, file_google_protobuf_descriptor } from '@bufbuild/protobuf/wkt';
import { describe, expect, it } from 'vitest';
import { QuotaResource, ResourceKind, RpcPolicySchema, file_debvisor_v1_options, rpc_policy } from '../../src/gen/debvisor/v1/options_pb.js';
import { compilePolicy, methodIndex, type CompiledPolicy } from '../../src/rpc/policy.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';

const { OPTIONAL: LABEL_OPTIONAL } = FieldDescriptorProto_Label;
const { MESSAGE: TYPE_MESSAGE, UINT64: TYPE_UINT64, STRING: TYPE_STRING } = FieldDescriptorProto_Type;

interface Declared {
  readonly amountField?: string;
  readonly auditObject?: string;
  readonly resourceField?: string;
  readonly mutates?: boolean;
  /** Leave `request_id` out of the request. */
  readonly noRequestId?: boolean;
}

/** A service with one method whose policy declares `declared` over a request with `name`, a nested `spec.size_bytes` and `request_id`. */
function methodWith(amountField: string, auditObject = '', more: Declared = {}): DescMethod {
  const declared = { amountField, auditObject, resourceField: 'name', mutates: true, ...more };
  const options = create(MethodOptionsSchema);
  setExtension(
    options,
    rpc_policy,
    create(RpcPolicySchema, {
      permission: 'storage:volume:create',
      mutates: declared.mutates,
      quotaResource: QuotaResource.STORAGE_GB,
      quotaAmountField: declared.amountField,
      resourceKind: ResourceKind.POOL,
      resourceField: declared.resourceField,
      auditObject: declared.auditObject,
    }),
  );
  const file = create(FileDescriptorProtoSchema, {
    name: 'test/paths.proto',
    package: 'test.paths',
    syntax: 'proto3',
    dependency: ['debvisor/v1/options.proto'],
    messageType: [
      { name: 'Spec', field: [{ name: 'size_bytes', number: 1, type: TYPE_UINT64, label: LABEL_OPTIONAL, jsonName: 'sizeBytes' }] },
      {
        name: 'CreateRequest',
        field: [
          { name: 'name', number: 1, type: TYPE_STRING, label: LABEL_OPTIONAL, jsonName: 'name' },
          { name: 'spec', number: 2, type: TYPE_MESSAGE, typeName: '.test.paths.Spec', label: LABEL_OPTIONAL, jsonName: 'spec' },
          ...(declared.noRequestId ? [] : [{ name: 'request_id', number: 3, type: TYPE_STRING, label: LABEL_OPTIONAL, jsonName: 'requestId' }]),
        ],
      },
      { name: 'CreateResponse' },
    ],
    service: [{ name: 'Paths', method: [{ name: 'Create', inputType: '.test.paths.CreateRequest', outputType: '.test.paths.CreateResponse', options }] }],
  });
  const registry = createFileRegistry(file, (name) => ({ 'debvisor/v1/options.proto': file_debvisor_v1_options, 'google/protobuf/descriptor.proto': file_google_protobuf_descriptor })[name]);
  const service = registry.getService('test.paths.Paths');
  if (!service) throw new Error('no service');
  return service.methods[0] as DescMethod;
}

const policyOf = (method: DescMethod): CompiledPolicy => {
  const policy = compilePolicy(method);
  if (!policy) throw new Error('no policy');
  return policy;
};
const quotaAmountOf = (method: DescMethod, request: Message) => policyOf(method).quotaAmountOf(request);
const auditObjectOf = (method: DescMethod, request: Message) => policyOf(method).auditObjectOf(request);

describe('policy field paths', () => {
  it('reads a nested quota_amount_field', () => {
    const method = methodWith('spec.size_bytes');
    const request = create(method.input, { spec: { sizeBytes: 3n * 1024n ** 3n } });
    expect(quotaAmountOf(method, request)).toBe(3n * 1024n ** 3n);
    // Unset on the way: nothing declared to consume.
    expect(quotaAmountOf(method, create(method.input))).toBe(0n);
  });

  it('answers undefined for an RPC that declares no amount field', () => {
    const method = methodWith('');
    expect(quotaAmountOf(method, create(method.input))).toBeUndefined();
  });

  it('fails at start-up on an amount field that is missing or not an integer', () => {
    expect(() => methodIndex([methodWith('spec.nothing').parent])).toThrow(/quota_amount_field "spec.nothing": no field "nothing"/);
    expect(() => methodIndex([methodWith('name').parent])).toThrow(/quota_amount_field "name": "name" is not a singular integer/);
    expect(methodIndex([methodWith('spec.size_bytes').parent]).size).toBe(1);
  });
});

describe('declared fields that the request lacks fail the start, naming the RPC and the option', () => {
  it('a missing or non-string resource_field', () => {
    expect(() => compilePolicy(methodWith('', '', { resourceField: 'pool' }))).toThrow(/^test\.paths\.Paths\.Create: resource_field "pool": no field "pool" in test\.paths\.CreateRequest/);
    expect(() => compilePolicy(methodWith('', '', { resourceField: 'spec.size_bytes' }))).toThrow(/resource_field "spec\.size_bytes": "size_bytes" is not a singular string/);
  });

  it('a mutating RPC without a string request_id, and a read with one', () => {
    expect(() => compilePolicy(methodWith('', '', { noRequestId: true }))).toThrow(/^test\.paths\.Paths\.Create: a mutating RPC takes a string request_id/);
    expect(() => compilePolicy(methodWith('', '', { mutates: false }))).toThrow(/only a mutating unary RPC takes a request_id/);
    expect(compilePolicy(methodWith('', '', { mutates: false, noRequestId: true }))?.idempotency).toBeUndefined();
  });

  it('compiles the idempotency key, read from the request without a cast', () => {
    const method = methodWith('');
    const policy = policyOf(method);
    expect(policy.idempotency?.requestIdField.name).toBe('request_id');
    expect(policy.requestIdOf(create(method.input, { requestId: 'r-1' }))).toBe('r-1');
    expect(policy.requestIdOf(create(method.input))).toBe('');
  });
});

describe('audit_object', () => {
  const m = StorageService.method;

  it('renders the template from the request, a repeated field comma-joined', () => {
    expect(auditObjectOf(m.deleteSnapshot, create(m.deleteSnapshot.input, { dataset: { pool: 'ci', name: 'data' }, snapshotNames: ['s1', 's2'] }))).toBe('pool:ci/data@s1,s2');
    expect(auditObjectOf(m.createVolume, create(m.createVolume.input, { volume: { pool: 'ci', name: 'vol1' }, sizeBytes: 1n }))).toBe('pool:ci/vol1');
    expect(
      auditObjectOf(m.cloneRbdFromTemplate, create(m.cloneRbdFromTemplate.input, { targetPool: 'ci', targetImage: 'vm1', templatePool: 'tpl', templateImage: 'deb', templateSnapshot: 'v1' })),
    ).toBe('pool:ci/vm1 from pool:tpl/deb@v1');
  });

  it('names the target resource when the resource field is empty, or the RPC declares no template', () => {
    expect(auditObjectOf(m.cloneRbdFromTemplate, create(m.cloneRbdFromTemplate.input, { templatePool: 'tpl', templateImage: 'deb' }))).toBe('pool:tpl');
    expect(auditObjectOf(m.createVolume, create(m.createVolume.input, {}))).toBeUndefined();
    expect(auditObjectOf(VmService.method.startVm, create(VmService.method.startVm.input, { vmName: 'vm1' }))).toBe('vm:vm1');
  });

  it('every declared template compiles at start-up', () => {
    expect(() => methodIndex(API_SERVICES)).not.toThrow();
  });

  it('refuses at start-up a template with a brace that is no field path', () => {
    expect(() => methodIndex([methodWith('', 'pool:{name}/{Spec}').parent])).toThrow(/audit_object .*not a dotted field path/);
    expect(() => methodIndex([methodWith('', 'pool:{name}/{spec.size_bytes').parent])).toThrow(/audit_object .*not a dotted field path/);
    expect(() => methodIndex([methodWith('', 'pool:{name}').parent])).not.toThrow();
  });
});
