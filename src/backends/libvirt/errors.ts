// How virsh failures become typed errors. The stderr texts are the ones libvirt 9.0 prints
// (captured from the real test driver and QEMU driver into test/backends/fixtures/libvirt/).
import type { ClassifyRule } from '../exec.js';
import { RpcError } from '../../rpc/errors.js';
import type { DomainState } from './xml.js';

/**
 * The VM is in the wrong state for the request (start on a running VM, shutdown on a stopped one).
 * An RpcError with code FAILED_PRECONDITION, so src/rpc/errors.ts maps it as is; the message
 * names the VM and its current state and never contains stderr (that is on `cause`).
 */
export class VmStateError extends RpcError {
  constructor(
    readonly vmName: string,
    /** The state libvirt reported right after the failure ("nostate" if it could not be read). */
    readonly state: DomainState,
    readonly operation: string,
    options?: { cause?: unknown },
  ) {
    super('FAILED_PRECONDITION', `cannot ${operation} VM ${JSON.stringify(vmName)}: it is ${STATE_TEXT[state]}`, options);
    this.name = 'VmStateError';
  }
}

/** How a state reads in a client message. */
export const STATE_TEXT: Record<DomainState, string> = {
  nostate: 'in an unknown state',
  running: 'running',
  blocked: 'blocked',
  paused: 'paused',
  shutdown: 'shutting down',
  shutoff: 'shut off',
  crashed: 'crashed',
  pmsuspended: 'suspended by the guest',
};

/**
 * stderr that means "wrong state for this operation". Matching it turns the failure into a VmStateError.
 *  - "Domain is already active"                                   start on a running/paused domain (test driver, QEMU)
 *  - "Requested operation is not valid: domain is already running" start (QEMU)
 *  - "Requested operation is not valid: domain is not running"     destroy/reboot/shutdown on a shut-off domain
 *  - "internal error: domain 'X' not running"                      shutdown on a shut-off domain (test driver)
 */
export const STATE_CONFLICT = /Domain is already active|domain is already running|domain is not running|internal error: domain '[^']*' not running/i;

/** Rules for everything else, in order: connection problems first, they can mention a domain too. */
export const VIRSH_RULES: readonly ClassifyRule[] = [
  {
    // "error: failed to connect to the hypervisor" / "Failed to connect socket to '…': No such file or directory"
    // (libvirtd not running), "Connection refused", and a daemon that went away mid-call.
    kind: 'unavailable',
    stderr: /failed to connect to the hypervisor|Failed to connect socket|Connection refused|End of file while reading data|Cannot recv data|Cannot write data|client socket is closed|no connection driver available/i,
    message: 'libvirt is unreachable; retry later',
  },
  {
    kind: 'not_found',
    stderr: /Domain snapshot not found|no domain snapshot with matching name|has no current snapshot/i,
    message: 'the VM snapshot does not exist',
  },
  {
    // "error: failed to get domain 'x'" (virsh lookup), "Domain not found: no domain with matching name 'x'" (API).
    kind: 'not_found',
    stderr: /failed to get domain|Domain not found|no domain with matching/i,
    message: 'the VM does not exist',
  },
  {
    // "operation failed: domain moment snap1 already exists" (snapshot), "domain 'x' already exists with uuid …" (define).
    kind: 'exists',
    stderr: /already exists/i,
    message: 'the object already exists',
  },
  {
    // "Timed out during operation: cannot acquire state change lock"
    kind: 'busy',
    stderr: /cannot acquire state change lock|another job is running|job .* is active/i,
    message: 'the VM is busy with another operation; retry later',
  },
];
