// The checks PrepareMigration reports and MigrateVM enforces. Client mistakes (a bad name) are
// INVALID_ARGUMENT, an unknown VM NOT_FOUND and an unreachable source libvirt UNAVAILABLE (thrown);
// everything about the target's fitness is a reason in the answer.
import { parseDomainXml } from '../backends/libvirt/xml.js';
import { STATE_TEXT } from '../backends/libvirt/errors.js';
import { validateHostname, validateVmName } from '../backends/validate.js';
import type { NodeRegistry, NodeView } from '../nodes/registry.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import type { NodeConnections } from './connections.js';

/** How long the target's libvirt gets to answer `virsh uri` before it counts as unreachable. */
const TARGET_PING_TIMEOUT_MS = 10_000;
const MIB = 1024 * 1024;

export interface MigrationRequest {
  readonly vmName: string;
  readonly sourceNode: string;
  readonly targetNode: string;
}

export interface MigrationCheck {
  readonly allowed: boolean;
  readonly reasons: string[];
  readonly warnings: string[];
  readonly requiredMemoryBytes: number;
  readonly targetFreeMemoryBytes: number;
}

/**
 * Validates the names. An empty source means this daemon's node. The source must BE this daemon's
 * node: the source libvirtd runs the migration (--p2p), and only the daemon next to it can poll its
 * job, abort it and roll back; driving another node's libvirt over the template would put a second
 * hop (and a second failure mode) between the operation and the VM.
 */
export function migrationRequest(input: { vmName: string; sourceNode: string; targetNode: string }, localNode: string): MigrationRequest {
  const vmName = validateVmName(input.vmName, 'vm_name');
  const sourceNode = input.sourceNode ? validateHostname(input.sourceNode, 'source_node') : localNode;
  if (!input.targetNode) throw new InvalidArgumentError('target_node', 'required');
  const targetNode = validateHostname(input.targetNode, 'target_node');
  if (targetNode === sourceNode) throw new InvalidArgumentError('target_node', 'must differ from source_node');
  if (sourceNode !== localNode) {
    throw new RpcError('FAILED_PRECONDITION', `source_node ${sourceNode} is not this daemon's node (${localNode}); send the request to the daemon on ${sourceNode}`);
  }
  return { vmName, sourceNode, targetNode };
}

/** Target fitness from the registry: registered, online (lease), memory from its last heartbeat. */
export function targetReasons(target: NodeView | undefined, hostname: string, requiredMemoryBytes: number): { reasons: string[]; warnings: string[]; freeBytes: number } {
  if (!target) return { reasons: [`target node ${hostname} is not registered`], warnings: [], freeBytes: 0 };
  const reasons: string[] = [];
  const warnings: string[] = [];
  if (!target.online) reasons.push(`target node ${hostname} is offline (its liveness lease has expired)`);
  const health = target.record.health;
  const freeBytes = health?.memory_free_bytes ?? 0;
  if (!health || health.memory_total_bytes === 0) {
    reasons.push(`target node ${hostname} has not reported its memory in a heartbeat`);
  } else if (freeBytes < requiredMemoryBytes) {
    reasons.push(`not enough memory on target node ${hostname}: ${Math.floor(freeBytes / MIB)} MiB free at its last heartbeat, the VM needs ${Math.ceil(requiredMemoryBytes / MIB)} MiB`);
  }
  if (health && health.status !== 'HEALTHY' && health.status !== 'UNSPECIFIED') warnings.push(`target node ${hostname} reports ${health.status}`);
  if (health && health.cpu_load > 0.9) warnings.push(`target node ${hostname} is busy (CPU load ${health.cpu_load.toFixed(2)} per core)`);
  return { reasons, warnings, freeBytes };
}

export async function checkMigration(request: MigrationRequest, nodes: NodeRegistry, connections: NodeConnections, signal?: AbortSignal): Promise<MigrationCheck> {
  const source = connections.localLibvirt;
  const call = signal ? { signal } : {};
  // Unknown VM → NOT_FOUND and unreachable source libvirt → UNAVAILABLE propagate as errors.
  const state = await source.state(request.vmName, call);
  const requiredMemoryBytes = parseDomainXml(await source.dumpXml(request.vmName, call)).maxMemoryBytes;
  const reasons: string[] = [];
  if (state !== 'running') reasons.push(`VM ${request.vmName} is ${STATE_TEXT[state]} on ${request.sourceNode}; only a running VM can be live-migrated`);
  const target = await nodes.get(request.targetNode);
  const fitness = targetReasons(target, request.targetNode, requiredMemoryBytes);
  reasons.push(...fitness.reasons);
  if (target) {
    try {
      await connections.of(request.targetNode).ping({ ...call, timeoutMs: TARGET_PING_TIMEOUT_MS });
    } catch {
      reasons.push(`the libvirt of target node ${request.targetNode} is unreachable from ${request.sourceNode}`);
    }
  }
  return { allowed: reasons.length === 0, reasons, warnings: fitness.warnings, requiredMemoryBytes, targetFreeMemoryBytes: fitness.freeBytes };
}
