// FailoverVM: start a failed node's VM on a healthy node from its shared (RBD) disks.
// Guarded against split brain: only once the failed node's liveness lease has expired (checked
// when the request arrives and again right before the start), only for VMs whose every disk is
// network RBD (a local disk is not reachable from another node), and only once per published
// record (the inventory record is claimed with a compare-and-delete).
import type { Logger } from 'pino';
import { ExecError } from '../backends/exec.js';
import { parseDomainXml } from '../backends/libvirt/xml.js';
import { validateHostname, validateVmName } from '../backends/validate.js';
import type { NodeRegistry, NodeView } from '../nodes/registry.js';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { z } from 'zod';
import { OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import { defineOperationKind, type ResultOf } from '../operations/kinds.js';
import type { OperationHandle } from '../operations/manager.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import type { VmInventoryRecord } from '../store/records.js';
import type { NodeConnections } from './connections.js';
import { targetReasons } from './checks.js';
import type { VmInventory } from './inventory.js';

/** FailoverVM: its params (the target chosen), and the MigrationResult it gives. */
export const FAILOVER_VM = defineOperationKind(OperationKind.FAILOVER_VM, z.object({ vmName: z.string(), failedNode: z.string(), targetNode: z.string() }), 'migration');
export type FailoverParams = z.infer<typeof FAILOVER_VM.params>;

export interface FailoverDeps {
  readonly nodes: NodeRegistry;
  readonly inventory: VmInventory;
  readonly connections: NodeConnections;
  readonly log: Logger;
}

/** Disks that are not shared storage (network RBD), as "vda (file /var/lib/…)"; cdroms without media are fine. */
export function unsharedDisks(xml: string): string[] {
  return parseDomainXml(xml)
    .disks.filter((disk) => !(disk.sourceType === 'network' && disk.protocol === 'rbd'))
    .filter((disk) => !(disk.device === 'cdrom' || disk.device === 'floppy') || disk.sourcePath !== '')
    .map((disk) => `${disk.targetDev || '?'} (${disk.sourceType || 'unknown'}${disk.protocol ? ` ${disk.protocol}` : ''}${disk.sourcePath ? ` ${disk.sourcePath}` : ''})`);
}

function splitBrain(failedNode: string): RpcError {
  return new RpcError(
    'FAILED_PRECONDITION',
    `node ${failedNode} still holds its liveness lease: starting its VM elsewhere now risks split brain (two copies writing one disk); fail over only after the lease has expired`,
  );
}

/**
 * Everything checkable before the operation starts. Returns the params with the target chosen:
 * the requested one, or the online node (other than the failed one) with the most free memory.
 */
export async function planFailover(input: { vmName: string; failedNode: string; targetNode: string }, deps: FailoverDeps): Promise<FailoverParams> {
  const vmName = validateVmName(input.vmName, 'vm_name');
  if (!input.failedNode) throw new InvalidArgumentError('failed_node', 'required');
  const failedNode = validateHostname(input.failedNode, 'failed_node');
  const requested = input.targetNode ? validateHostname(input.targetNode, 'target_node') : '';
  if (requested === failedNode) throw new InvalidArgumentError('target_node', 'must differ from failed_node');
  const failed = await deps.nodes.get(failedNode);
  if (!failed) throw new RpcError('NOT_FOUND', `node ${failedNode} is not registered`);
  if (failed.online) throw splitBrain(failedNode);
  const found = await deps.inventory.get(failedNode, vmName);
  if (!found) throw new RpcError('NOT_FOUND', `VM ${JSON.stringify(vmName)} is not in node ${failedNode}'s published inventory`);
  const record = found.value;
  const unshared = unsharedDisks(record.xml);
  if (unshared.length > 0) {
    throw new RpcError('FAILED_PRECONDITION', `VM ${JSON.stringify(vmName)} has disks that are not shared storage (network RBD), so no other node can start it: ${unshared.join(', ')}`);
  }
  if (record.state !== 'running') {
    throw new RpcError('FAILED_PRECONDITION', `VM ${JSON.stringify(vmName)} was ${record.state} on ${failedNode} at its last report; failover restarts only VMs that were running`);
  }
  // The requested node is read once; a chosen one comes with its view from the listing.
  const chosen = requested ? undefined : chooseTarget(await deps.nodes.all(), failedNode, record);
  const targetNode = chosen?.record.hostname ?? requested;
  const fitness = targetReasons(chosen ?? (await deps.nodes.get(requested)), targetNode, record.memory_bytes);
  if (fitness.reasons.length > 0) throw new RpcError('FAILED_PRECONDITION', `cannot fail over to ${targetNode}: ${fitness.reasons.join('; ')}`);
  return { vmName, failedNode, targetNode };
}

function chooseTarget(all: readonly NodeView[], failedNode: string, record: VmInventoryRecord): NodeView {
  const candidates = all
    .filter((n) => n.online && n.record.hostname !== failedNode && (n.record.health?.memory_free_bytes ?? 0) >= record.memory_bytes)
    .sort((a, b) => (b.record.health?.memory_free_bytes ?? 0) - (a.record.health?.memory_free_bytes ?? 0));
  const best = candidates[0];
  if (!best) throw new RpcError('FAILED_PRECONDITION', `no online node has the ${Math.ceil(record.memory_bytes / 1024 / 1024)} MiB of free memory VM ${JSON.stringify(record.name)} needs`);
  return best;
}

export async function runFailover(op: OperationHandle<FailoverParams>, deps: FailoverDeps): Promise<ResultOf<'migration'>> {
  const { vmName, failedNode, targetNode } = op.params;
  // The lease may have come back (the node was only partitioned) since the request was accepted.
  if (await deps.nodes.isOnline(failedNode)) throw splitBrain(failedNode);
  op.progress(10, 'claiming the VM record');
  const record = await deps.inventory.claim(failedNode, vmName);
  const target = deps.connections.of(targetNode);
  try {
    op.progress(30, `defining the VM on ${targetNode}`);
    await target.defineXml(record.xml);
    op.progress(60, `starting the VM on ${targetNode}`);
    try {
      await target.start(vmName);
    } catch (err) {
      // Already running there (a retried failover): that is the goal.
      if (!(err instanceof RpcError && err.code === 'FAILED_PRECONDITION' && (await target.state(vmName)) === 'running')) throw err;
    }
    op.progress(90, 'verifying');
    const state = await target.state(vmName);
    if (state !== 'running') throw new RpcError('INTERNAL', `VM ${JSON.stringify(vmName)} is ${state} on ${targetNode} after the start`);
  } catch (err) {
    // Put the record back so the failover can be retried (to another node, say).
    await deps.inventory.restore(record).catch((restoreErr: unknown) => deps.log.error({ err: restoreErr, vm: vmName }, 'could not restore the VM inventory record'));
    if (err instanceof ExecError || err instanceof RpcError) throw err;
    throw new RpcError('INTERNAL', `failover of VM ${JSON.stringify(vmName)} to ${targetNode} failed`, { cause: err });
  }
  return { case: 'migration', value: { vmName, sourceNode: failedNode, targetNode, downtime: durationFromMs(0), transferredBytes: 0n } };
}
