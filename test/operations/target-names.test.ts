// The target names a mutating request carries are checked before its request_id is looked up
// (src/operations/target-names.ts): with the handlers' validators, naming the field.
import { create, type DescMethod, type Message } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { AccessService, BindRoleRequestSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { MigrateVMRequestSchema, MigrationService } from '../../src/gen/debvisor/v1/migration_pb.js';
import { CreateSnapshotRequestSchema, StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StartVmRequestSchema, VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { validateTargetNames as validateNames } from '../../src/operations/target-names.js';
import { compilePolicy } from '../../src/rpc/policy.js';

const validateTargetNames = (method: DescMethod, request: Message) => validateNames(compilePolicy(method)!, request);

describe('validateTargetNames', () => {
  it('refuses an invalid VM, node, pool or principal name, naming the field', () => {
    expect(() => validateTargetNames(VmService.method.startVm, create(StartVmRequestSchema, { vmName: '-x;id' }))).toThrow(/^vm_name: /);
    expect(() => validateTargetNames(MigrationService.method.migrateVM, create(MigrateVMRequestSchema, { vmName: 'vm1', targetNode: 'a_b' }))).toThrow(/^target_node: /);
    expect(() => validateTargetNames(StorageService.method.createSnapshot, create(CreateSnapshotRequestSchema, { dataset: { pool: 'a;b', name: 'v' } }))).toThrow(/^dataset\.pool: /);
    expect(() => validateTargetNames(AccessService.method.bindRole, create(BindRoleRequestSchema, { principal: 'spiffe://x/\u001b[2J', roleName: 'viewer' }))).toThrow(/^principal: /);
  });

  it('lets valid and empty names through (the handler decides what an empty one means)', () => {
    expect(() => validateTargetNames(VmService.method.startVm, create(StartVmRequestSchema, { vmName: 'web-1' }))).not.toThrow();
    expect(() => validateTargetNames(MigrationService.method.migrateVM, create(MigrateVMRequestSchema, { vmName: 'vm1', targetNode: 'node-b.example' }))).not.toThrow();
    expect(() => validateTargetNames(StorageService.method.createSnapshot, create(CreateSnapshotRequestSchema, { dataset: { pool: 'vg+1', name: 'v' } }))).not.toThrow();
    expect(() => validateTargetNames(VmService.method.startVm, create(StartVmRequestSchema, {}))).not.toThrow();
  });
});
