// UpdateVm: vCPUs, memory, disks and NICs of an existing VM, live where libvirt can.
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { UpdateVmRequest, UpdateVmResponseSchema } from '../gen/debvisor/v1/vm_pb.js';
import type { CallContext } from '../rpc/context.js';
import type { Principal } from '../rpc/principal.js';
import { RpcError } from '../rpc/errors.js';

export class VmUpdates {
  // eslint-disable-next-line @typescript-eslint/no-unused-vars -- replaced by the implementation below
  update(_request: UpdateVmRequest, _principal: Principal, _ctx: CallContext): Promise<MessageInitShape<typeof UpdateVmResponseSchema>> {
    return Promise.reject(new RpcError('UNIMPLEMENTED', 'UpdateVm is not implemented yet'));
  }
}
