// libvirt's domain states as debvisor.v1.VmState, for VmService replies and VM events alike.
import type { DomainState } from '../backends/libvirt/xml.js';
import { VmState } from '../gen/debvisor/v1/vm_pb.js';

export const VM_STATES: Readonly<Record<DomainState, VmState>> = {
  nostate: VmState.UNSPECIFIED,
  running: VmState.RUNNING,
  blocked: VmState.BLOCKED,
  paused: VmState.PAUSED,
  shutdown: VmState.SHUTTING_DOWN,
  shutoff: VmState.SHUT_OFF,
  crashed: VmState.CRASHED,
  pmsuspended: VmState.PM_SUSPENDED,
};
