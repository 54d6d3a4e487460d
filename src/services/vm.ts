// VmService: thin protobuf mapping over the live VM inventory (src/vms/inventory.ts) for reads,
// and the libvirt backend (src/backends/libvirt/virsh.ts) for changes. ListVms and GetVm spawn
// nothing; a change announces its caller to the inventory (the events' actor), acts, and reloads
// the one VM it changed so the reply shows the result.
// Names are validated before anything is spawned; wrong-state, unknown-VM and
// unreachable-libvirtd failures arrive already typed (FAILED_PRECONDITION, NOT_FOUND, UNAVAILABLE).
import { create, type MessageInitShape } from '@bufbuild/protobuf';
import { durationMs, timestampFromDate } from '@bufbuild/protobuf/wkt';
import { VmSchema, VmState, type Vm, type VmService, type VmSnapshotSchema } from '../gen/debvisor/v1/vm_pb.js';
import { VmStateError } from '../backends/libvirt/errors.js';
import type { Domain, DomainSnapshot, DomainSummary, Libvirt } from '../backends/libvirt/virsh.js';
import { actorOf } from '../events/types.js';
import type { VmLiveInventory } from '../vms/inventory.js';
import { VM_STATES as STATES } from '../vms/states.js';
import { validateText, validateVmName } from '../backends/validate.js';
import { definitionEtag } from '../vms/domain-xml.js';
import { globMatches, isValidResourceGlob, keyScopeShows } from '../authz/decide.js';
import { z } from 'zod';
import { OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import type { OperationManager } from '../operations/manager.js';
import { defineOperationKind } from '../operations/kinds.js';
import type { QuotaManager } from '../quota/manager.js';
import type { VmSnapshotOwners } from '../vms/snapshot-owners.js';
import type { HandlersOf } from '../rpc/adapter.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, RpcError, UnauthenticatedError } from '../rpc/errors.js';
import { operationMessage } from './operations.js';
import { pageByKey, pageByOffset } from '../rpc/paging.js';

const DEFAULT_SHUTDOWN_WAIT_MS = 60_000;
const MAX_SHUTDOWN_WAIT_MS = 3_600_000;

/** ShutdownVm with wait = true: its params, and the ShutdownResult it gives. */
export const SHUTDOWN_VM = defineOperationKind(OperationKind.SHUTDOWN_VM, z.object({ vmName: z.string(), waitMs: z.number(), force: z.boolean() }), 'shutdown');

function principalOf(ctx: CallContext) {
  if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
  return ctx.principal;
}

function summaryFields(vm: DomainSummary, node: string) {
  return {
    name: vm.name,
    uuid: vm.uuid,
    state: STATES[vm.state],
    vcpus: vm.vcpus,
    memoryBytes: BigInt(vm.memoryBytes),
    autostart: vm.autostart,
    persistent: vm.persistent,
    node,
    owner: vm.owner ?? '',
  };
}

/**
 * ListVms's Vm messages, built once per inventory entry (entries are replaced, never changed, so
 * an entry is its own cache key): a page of 100 then costs no message construction.
 */
const summaries = new WeakMap<DomainSummary, { readonly node: string; readonly message: Vm }>();

function summaryMessage(vm: DomainSummary, node: string): MessageInitShape<typeof VmSchema> {
  const cached = summaries.get(vm);
  if (cached?.node === node) return cached.message;
  const message = create(VmSchema, summaryFields(vm, node));
  summaries.set(vm, { node, message });
  return message;
}

function vmMessage(vm: Domain, node: string): MessageInitShape<typeof VmSchema> {
  return {
    ...summaryFields(vm, node),
    disks: vm.disks.map((d) => ({ targetDev: d.targetDev, sourcePath: d.sourcePath, format: d.format, device: d.device })),
    interfaces: vm.interfaces.map((i) => ({ type: i.type, source: i.source, mac: i.mac, model: i.model })),
    currentSnapshot: vm.currentSnapshot,
    description: vm.description,
  };
}

function snapshotMessage(s: DomainSnapshot): MessageInitShape<typeof VmSnapshotSchema> {
  return {
    name: s.name,
    vmName: s.vmName,
    description: s.description,
    createTime: timestampFromDate(s.createTime),
    vmState: STATES[s.vmState],
    parent: s.parent,
    current: s.current,
  };
}

/** Registers the runner of ShutdownVm with wait = true. */
export function registerShutdownOperationKind(operations: OperationManager, libvirt: Libvirt): void {
  operations.register(SHUTDOWN_VM, {
    run: async (op) => {
      const params = op.params;
      op.progress(0, 'shutdown requested');
      const outcome = await libvirt.shutdownAndWait(params.vmName, {
        waitMs: params.waitMs,
        force: params.force,
        signal: op.signal,
        onPoll: (state, elapsed) => op.progress(Math.min(99, (elapsed / Math.max(1, params.waitMs)) * 100), `waiting: VM is ${state}`),
      });
      if (outcome.state !== 'shutoff' && outcome.state !== 'crashed') {
        throw new RpcError('DEADLINE_EXCEEDED', `VM ${JSON.stringify(params.vmName)} was still ${outcome.state} after ${params.waitMs} ms`);
      }
      return { case: 'shutdown', value: { vmName: params.vmName, forced: outcome.forced } };
    },
  });
}

export interface VmHandlerDeps {
  readonly libvirt: Libvirt;
  readonly inventory: VmLiveInventory;
  readonly operations: OperationManager;
  readonly quotas: QuotaManager;
  readonly snapshotOwners: VmSnapshotOwners;
  /** This host's node name (Vm.node). */
  readonly node: () => string;
  /** CreateVm, UpdateVm, DeleteVm and GetVmDefinition (src/services/vm-provisioning.ts). */
  readonly provisioning: Pick<HandlersOf<typeof VmService>, 'createVm' | 'updateVm' | 'deleteVm' | 'getVmDefinition'>;
}

export function vmHandlers({ libvirt, inventory, operations, quotas, snapshotOwners, node, provisioning }: VmHandlerDeps): HandlersOf<typeof VmService> {
  /** GetVm's answer, from the inventory. */
  const get = (vmName: string) => {
    const { vm, staleSince } = inventory.get(validateVmName(vmName, 'vm_name'));
    return {
      vm: vmMessage(vm, node()),
      ...(vm.inactiveXml !== undefined ? { etag: definitionEtag(vm.inactiveXml) } : {}),
      ...(staleSince ? { staleSince: timestampFromDate(staleSince) } : {}),
    };
  };
  /** Changes to `vm` seen from now on, until the handle is disposed, are this call's (its actor and trace id on the events). */
  const announce = (vm: string, ctx: CallContext, extraMs = 0) => inventory.attribute(vm, actorOf(ctx.principal), ctx.traceId, extraMs);
  /** Runs a change whose effect is seen by the time it returns: later changes to `vm` are not this call's. */
  const attributed = async <T>(vm: string, ctx: CallContext, act: () => Promise<T>): Promise<T> => {
    const attribution = announce(vm, ctx);
    try {
      return await act();
    } finally {
      attribution[Symbol.dispose]();
    }
  };
  /** The VM as the change left it: reloaded first, since the event may not have arrived yet. */
  const changed = async (vm: string) => vmMessage(await inventory.reloaded(vm), node());

  return {
    ...provisioning,

    listVms: (request, ctx) => {
      const principal = principalOf(ctx);
      if (!(request.state in VmState)) throw new InvalidArgumentError('state', 'unknown VM state');
      if (request.nameGlob && !isValidResourceGlob(request.nameGlob)) {
        throw new InvalidArgumentError('name_glob', 'may contain only name characters plus * and ?, at most 256');
      }
      validateText(request.owner, 'owner', 256);
      // A scoped API key lists only the VMs its `vm` globs allow (list RPCs name no target for RBAC).
      const { vms: inventoried, staleSince } = inventory.list();
      const all = inventoried.filter(
        (vm) =>
          (request.state === VmState.UNSPECIFIED || STATES[vm.state] === request.state) &&
          (!request.nameGlob || globMatches(request.nameGlob, vm.name)) &&
          (!request.owner || vm.owner === request.owner) &&
          keyScopeShows(principal.apiKey?.resourceGlobs, 'vm', vm.name),
      );
      const page = pageByKey(all, (vm) => vm.name, request);
      return Promise.resolve({
        vms: page.items.map((vm) => summaryMessage(vm, node())),
        nextPageToken: page.nextPageToken,
        ...(staleSince ? { staleSince: timestampFromDate(staleSince) } : {}),
      });
    },

    getVm: (request) => Promise.resolve(get(request.vmName)),

    startVm: (request, ctx) => {
      const vm = validateVmName(request.vmName, 'vm_name');
      return attributed(vm, ctx, async () => {
        const state = await libvirt.state(vm, { signal: ctx.signal });
        if (state === 'paused') await libvirt.resume(vm, { signal: ctx.signal });
        else await libvirt.start(vm, { signal: ctx.signal });
        return { vm: await changed(vm) };
      });
    },

    shutdownVm: async (request, ctx) => {
      const vm = validateVmName(request.vmName, 'vm_name');
      if (!request.wait) {
        if (request.timeout !== undefined) throw new InvalidArgumentError('timeout', 'only meaningful with wait = true');
        // The guest goes off after the reply: the change stays this call's for the attribution window.
        announce(vm, ctx);
        await libvirt.shutdown(vm, { signal: ctx.signal });
        return { vm: await changed(vm) };
      }
      const waitMs = (request.timeout ? durationMs(request.timeout) : DEFAULT_SHUTDOWN_WAIT_MS);
      if (!Number.isFinite(waitMs) || waitMs < 0 || waitMs > MAX_SHUTDOWN_WAIT_MS) throw new InvalidArgumentError('timeout', 'must be between 0 and 1 hour');
      // Refuse up front what the operation could only fail on: an unknown VM, a VM already off.
      const state = await libvirt.state(vm, { signal: ctx.signal });
      if (state === 'shutoff' || state === 'crashed') throw new VmStateError(vm, state, 'shut down');
      // The VM goes off while the operation waits: the change is this call's for that long too.
      announce(vm, ctx, waitMs);
      const record = await operations.launch(ctx, SHUTDOWN_VM, {
        target: `vm:${vm}`,
        params: { vmName: vm, waitMs, force: request.forceAfterTimeout },
        ...(request.requestId ? { requestId: request.requestId } : {}),
      });
      return { vm: await changed(vm), operation: operationMessage(record) };
    },

    rebootVm: (request, ctx) => {
      const vm = validateVmName(request.vmName, 'vm_name');
      return attributed(vm, ctx, async () => {
        await libvirt.reboot(vm, { signal: ctx.signal });
        return { vm: await changed(vm) };
      });
    },

    destroyVm: (request, ctx) => {
      const vm = validateVmName(request.vmName, 'vm_name');
      return attributed(vm, ctx, async () => {
        await libvirt.destroy(vm, { signal: ctx.signal, graceful: request.graceful });
        return { vm: await changed(vm) };
      });
    },

    createVmSnapshot: async (request, ctx) => {
      const principal = principalOf(ctx);
      const vm = validateVmName(request.vmName, 'vm_name');
      const create = async () => {
        const snapshot = await libvirt.snapshotCreate(vm, request.snapshotName, request.description || undefined, { signal: ctx.signal });
        try {
          await snapshotOwners.recordCreated(vm, snapshot.name, principal.id);
        } catch (err) {
          // A snapshot nobody owns would keep its quota unit forever: undo it rather than half-do it.
          await libvirt.snapshotDelete(vm, snapshot.name).catch(() => undefined);
          throw err;
        }
        return snapshot;
      };
      const snapshot = await attributed(vm, ctx, () => inventory.snapshotChange(vm, create, (s) => ({ snapshotName: s.name, change: 'created' })));
      return { snapshot: snapshotMessage(snapshot) };
    },

    listVmSnapshots: async (request, ctx) => {
      const snapshots = await libvirt.snapshotList(request.vmName, { signal: ctx.signal });
      // The test driver emits no event for snapshot changes, nor does libvirt for some: catch up here.
      inventory.observeCurrentSnapshot(request.vmName, snapshots.find((s) => s.current)?.name ?? '');
      const page = pageByOffset(snapshots, request);
      return { snapshots: page.items.map(snapshotMessage), nextPageToken: page.nextPageToken };
    },

    revertVmSnapshot: async (request, ctx) => {
      const vm = validateVmName(request.vmName, 'vm_name');
      const revert = () => libvirt.snapshotRevert(vm, request.snapshotName, { signal: ctx.signal });
      await attributed(vm, ctx, () => inventory.snapshotChange(vm, revert, () => ({ snapshotName: request.snapshotName, change: 'reverted' })));
      // snapshotChange reloaded the VM.
      return { vm: vmMessage(inventory.justRead(vm), node()) };
    },

    deleteVmSnapshot: async (request, ctx) => {
      const principal = principalOf(ctx);
      const vm = validateVmName(request.vmName, 'vm_name');
      const remove = () => libvirt.snapshotDelete(vm, request.snapshotName, { signal: ctx.signal, children: request.deleteChildren });
      const deleted = await attributed(vm, ctx, () => inventory.snapshotChange(vm, remove, () => ({ snapshotName: request.snapshotName, change: 'deleted' })));
      // Units go back to each snapshot's creator (never below zero).
      for (const [owner, units] of await snapshotOwners.forgetDeleted(vm, deleted, principal.id)) await quotas.release(owner, 'snapshots', units);
      return { deleted };
    },
  };
}
