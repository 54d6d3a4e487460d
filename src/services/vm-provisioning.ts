// VmService's CreateVm, UpdateVm, DeleteVm and GetVmDefinition (src/vms/provisioning.ts does the
// work): the plan is answered at once; a real create charges every quota it needs before its
// operation starts, and the operation gives back what it does not turn into a VM.
import { create } from '@bufbuild/protobuf';
import { OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import type { VmService } from '../gen/debvisor/v1/vm_pb.js';
import { VmDeletionSchema } from '../gen/debvisor/v1/vm_types_pb.js';
import { StorageBackend } from '../gen/debvisor/v1/storage_types_pb.js';
import { defineOperationKind } from '../operations/kinds.js';
import type { OperationManager } from '../operations/manager.js';
import type { HandlersOf } from '../rpc/adapter.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, RpcError, UnauthenticatedError } from '../rpc/errors.js';
import { causeOf } from '../events/cause.js';
import { validateVmName } from '../backends/validate.js';
import type { Libvirt } from '../backends/libvirt/virsh.js';
import type { StorageManager } from '../storage/manager.js';
import type { VolumeKey } from '../storage/names.js';
import { definitionEtag } from '../vms/domain-xml.js';
import { createVmParams, deleteVmParams, type VmProvisioning } from '../vms/provisioning.js';
import type { VmUpdates } from '../vms/update.js';
import { operationMessage } from './operations.js';

/** CreateVm: the plan it carried out. Resumed after a restart, it removes what the killed run made and fails. */
export const CREATE_VM = defineOperationKind(OperationKind.CREATE_VM, createVmParams, 'createdVm');
/** DeleteVm: what was removed. Resumed after a restart, it carries the deletion through. */
export const DELETE_VM = defineOperationKind(OperationKind.DELETE_VM, deleteVmParams, 'deletedVm');

export function registerVmProvisioningKinds(operations: OperationManager, provisioning: VmProvisioning): void {
  operations.register(CREATE_VM, {
    resumable: true,
    run: async (op) => ({ case: 'createdVm', value: await provisioning.create(op.params, op) }),
  });
  operations.register(DELETE_VM, {
    resumable: true,
    run: async (op) => ({ case: 'deletedVm', value: create(VmDeletionSchema, await provisioning.delete(op.params, op)) }),
  });
}

export interface VmProvisioningHandlerDeps {
  readonly provisioning: VmProvisioning;
  readonly updates: VmUpdates;
  readonly operations: OperationManager;
  readonly libvirt: Libvirt;
  readonly storage: StorageManager;
}

function principalOf(ctx: CallContext) {
  if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
  return ctx.principal;
}

const KINDS: Partial<Record<StorageBackend, 'lvm' | 'rbd'>> = { [StorageBackend.LVM]: 'lvm', [StorageBackend.RBD]: 'rbd' };

export function vmProvisioningHandlers({ provisioning, updates, operations, libvirt, storage }: VmProvisioningHandlerDeps): Pick<HandlersOf<typeof VmService>, 'createVm' | 'updateVm' | 'deleteVm' | 'getVmDefinition'> {
  return {
    createVm: async (request, ctx) => {
      const principal = principalOf(ctx);
      const plan = await provisioning.plan(request.spec, principal, { signal: ctx.signal });
      if (request.validateOnly) return { plan: plan.message };
      const refused = plan.message.permissions.filter((p) => !p.allowed);
      if (refused.length > 0) throw new RpcError('PERMISSION_DENIED', `permission denied: ${refused.map((p) => p.reason).join('; ')}`);
      await provisioning.charge(plan, causeOf(ctx));
      try {
        const record = await operations.launch(ctx, CREATE_VM, { target: `vm:${plan.params.vmName}`, params: plan.params, resumable: true, ...(request.requestId ? { requestId: request.requestId } : {}) });
        return { plan: plan.message, operation: operationMessage(record) };
      } catch (err) {
        await provisioning.refund(plan.params, plan.params.volumes.reduce((sum, v) => sum + v.charged, 0));
        throw err;
      }
    },

    deleteVm: async (request, ctx) => {
      const vm = validateVmName(request.vmName, 'vm_name');
      const alsoDelete: VolumeKey[] = request.alsoDelete.map((ref, i) => {
        const backend = KINDS[ref.backend];
        if (!backend) throw new InvalidArgumentError(`also_delete[${i}].backend`, 'required: STORAGE_BACKEND_LVM or STORAGE_BACKEND_RBD');
        return storage.volumeKey(backend, ref.pool, ref.name, `also_delete[${i}]`);
      });
      // Refuse up front what the operation could only fail on: an unknown VM, a running one without force.
      const definition = await provisioning.checkDelete(vm, principalOf(ctx), { force: request.force, deleteVolumes: request.deleteVolumes, alsoDelete }, { signal: ctx.signal });
      const record = await operations.launch(ctx, DELETE_VM, {
        target: `vm:${vm}`,
        params: { vmName: vm, deleteVolumes: request.deleteVolumes, force: request.force, alsoDelete, definition },
        resumable: true,
        ...(request.requestId ? { requestId: request.requestId } : {}),
      });
      return { operation: operationMessage(record) };
    },

    updateVm: (request, ctx) => updates.update(request, principalOf(ctx), ctx),

    getVmDefinition: async (request, ctx) => {
      const vm = validateVmName(request.vmName, 'vm_name');
      const xml = await libvirt.dumpXml(vm, { signal: ctx.signal, inactive: true });
      return { domainXml: xml, etag: definitionEtag(xml) };
    },
  };
}

