// The live inventory of this node's VMs: every libvirt domain's facts in memory, kept current by
// libvirt's events (each reloads only the domain it names) and by resyncs (at start, after the
// event subscription reconnects, and periodically) that cost one virsh process plus one per few
// changed domains. ListVms, GetVm and the heartbeat's store publication read it and spawn nothing.
// Changes it observes become VM events; a VmService call that announced itself (attribute) lends
// them its actor and trace id. See docs/vm-inventory.md.
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import { DomainError, type DomainErrorKind } from '../errors/domain.js';
import { ExecError } from '../backends/exec.js';
import { LibvirtEventSubscription, type DomainEventLine } from '../backends/libvirt/events.js';
import type { DomainDetails, DomainListing, Libvirt } from '../backends/libvirt/virsh.js';
import type { EventActorSchema } from '../gen/debvisor/v1/event_pb.js';
import { EventKind } from '../gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import { NO_EVENTS, type EventSink, type NewEvent } from '../events/types.js';
import { VM_STATES } from './states.js';

export type InventoryVm = DomainDetails;

export interface InventorySettings {
  /** Full resync period (besides the one at start and after each subscription restart). */
  readonly resyncIntervalMs: number;
  /** Stale answers are given for this long after libvirt became unreachable; then UNAVAILABLE. */
  readonly maxStalenessMs: number;
  /** How long after a VmService call a change to its VM is attributed to that call. */
  readonly attributionWindowMs: number;
  /** Longest delay between restarts of a failing event subscription. */
  readonly subscriptionBackoffMaxMs: number;
}

export const DEFAULT_INVENTORY_SETTINGS: InventorySettings = {
  resyncIntervalMs: 300_000,
  maxStalenessMs: 60_000,
  attributionWindowMs: 10_000,
  subscriptionBackoffMaxMs: 10_000,
};

export interface InventoryOptions {
  readonly libvirt: Libvirt;
  /** This node's name (the events' resource node). */
  readonly node: () => string;
  readonly log: Logger;
  readonly registry: Registry;
  readonly settings?: () => InventorySettings;
  /** Where observed changes go; NO_EVENTS by default. */
  readonly events?: EventSink;
  /** Told when the inventory becomes usable or stale (VmService's readiness). */
  readonly onHealth?: (healthy: boolean, detail: string | undefined) => void;
}

/** The inventory cannot answer: never loaded, or stale beyond the configured bound. */
export class InventoryUnavailableError extends DomainError {
  readonly meaning: DomainErrorKind = 'unavailable';
  constructor(readonly safeMessage: string) {
    super(safeMessage);
    this.name = 'InventoryUnavailableError';
  }
}

export class VmNotFoundError extends DomainError {
  readonly meaning: DomainErrorKind = 'not_found';
  readonly safeMessage = 'the VM does not exist';
  constructor(readonly vmName: string) {
    super(`VM ${JSON.stringify(vmName)} is not in the inventory`);
    this.name = 'VmNotFoundError';
  }
}

/** What an answer from the inventory carries besides its data. */
export interface Freshness {
  /** Set while libvirt is unreachable: when the inventory stopped following it. */
  readonly staleSince: Date | undefined;
}

interface Attribution {
  readonly actor: MessageInitShape<typeof EventActorSchema>;
  readonly traceId: string;
  readonly untilMs: number;
}

/** Why a domain is reloaded: the event detail for VM_STATE_CHANGED, and whether the caller reports the snapshot change itself. */
interface ReloadCause {
  detail: string;
  snapshotReported: boolean;
}

/** Serial runs of one task; calls made while a run is queued (not yet started) share it. */
class Coalescer {
  private tail: Promise<unknown> = Promise.resolve();
  private queued: Promise<void> | undefined;
  private active = 0;

  run(task: () => Promise<void>, onIdle: () => void): Promise<void> {
    if (this.queued) return this.queued;
    this.active++;
    const next = this.tail.then(() => {
      this.queued = undefined;
      return task();
    });
    this.queued = next;
    this.tail = next
      .catch(() => undefined)
      .finally(() => {
        if (--this.active === 0) onIdle();
      });
    return next;
  }
}

interface InventoryMetrics {
  readonly stale: Gauge;
  readonly domains: Gauge;
  readonly resyncs: Counter<'result'>;
  readonly reloads: Counter<'result'>;
}

const metricsByRegistry = new WeakMap<Registry, InventoryMetrics>();

function inventoryMetrics(registry: Registry): InventoryMetrics {
  const existing = metricsByRegistry.get(registry);
  if (existing) return existing;
  const metrics: InventoryMetrics = {
    stale: new Gauge({ name: 'vm_inventory_stale', help: '1 while the VM inventory cannot follow libvirt (or was never loaded), else 0.', registers: [registry] }),
    domains: new Gauge({ name: 'vm_inventory_domains', help: 'Domains in the VM inventory.', registers: [registry] }),
    resyncs: new Counter({ name: 'vm_inventory_resyncs_total', help: 'Full resyncs of the VM inventory, by result (ok, error).', labelNames: ['result'] as const, registers: [registry] }),
    reloads: new Counter({ name: 'vm_inventory_reloads_total', help: 'Single-domain reloads (events, VmService changes), by result (ok, error).', labelNames: ['result'] as const, registers: [registry] }),
  };
  metrics.stale.set(1);
  for (const result of ['ok', 'error']) {
    metrics.resyncs.inc({ result }, 0);
    metrics.reloads.inc({ result }, 0);
  }
  metricsByRegistry.set(registry, metrics);
  return metrics;
}

function sameDefinition(a: InventoryVm, b: InventoryVm): boolean {
  return (
    a.uuid === b.uuid &&
    a.vcpus === b.vcpus &&
    a.memoryBytes === b.memoryBytes &&
    a.maxMemoryBytes === b.maxMemoryBytes &&
    a.persistent === b.persistent &&
    a.autostart === b.autostart &&
    a.inactiveXml === b.inactiveXml &&
    JSON.stringify(a.disks) === JSON.stringify(b.disks) &&
    JSON.stringify(a.interfaces) === JSON.stringify(b.interfaces)
  );
}

function sameListing(a: DomainListing, b: DomainListing): boolean {
  return a.uuid === b.uuid && a.state === b.state && a.vcpus === b.vcpus && a.memoryBytes === b.memoryBytes && a.autostart === b.autostart && a.persistent === b.persistent;
}

function byName(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

export class VmLiveInventory {
  private readonly domains = new Map<string, InventoryVm>();
  /** Bumped at every write to `domains`: a reader that saw the same number saw the same domains. */
  private changes = 0;
  /** What the last resync's listing showed of each domain; dropped when a domain is reloaded on its own. */
  private readonly listed = new Map<string, DomainListing>();
  private sorted: InventoryVm[] | undefined;
  private readonly reloads = new Map<string, { coalescer: Coalescer; cause: ReloadCause }>();
  /** Sequence number of the last single-domain reload started, per domain (a resync leaves those alone). */
  private readonly touched = new Map<string, number>();
  private sequence = 0;
  private readonly resyncs = new Coalescer();
  private readonly attributions = new Map<string, Attribution>();
  /** VMs with a VmService snapshot call in flight (it reports its change itself). */
  private readonly snapshotCalls = new Map<string, number>();
  private readonly subscription: LibvirtEventSubscription;
  private readonly metrics: InventoryMetrics;
  private readonly events: EventSink;
  private readonly settings: () => InventorySettings;
  private synced = false;
  private staleSince: Date | undefined;
  /** When the event subscription last went away (events may be missing since then). */
  private lostAt: Date | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private healthy: boolean | undefined;

  constructor(private readonly options: InventoryOptions) {
    this.events = options.events ?? NO_EVENTS;
    this.settings = options.settings ?? (() => DEFAULT_INVENTORY_SETTINGS);
    this.metrics = inventoryMetrics(options.registry);
    this.subscription = new LibvirtEventSubscription({
      libvirt: options.libvirt,
      log: options.log,
      registry: options.registry,
      backoff: { initialMs: 100, maxMs: this.settings().subscriptionBackoffMaxMs },
      onConnected: () => void this.resync().catch(() => undefined),
      onDisconnected: () => {
        this.lostAt ??= new Date();
        // Also a probe: if libvirt itself is gone, this marks the inventory stale.
        void this.resync().catch(() => undefined);
      },
      onEvent: (event) => this.onEvent(event),
    });
  }

  /** Subscribes to libvirt's events (whose connection triggers the first resync) and schedules the periodic resync. */
  start(): void {
    this.report();
    this.subscription.start();
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.subscription.stop();
  }

  /** The event subscription's process (tests kill it). */
  get subscriptionPid(): number | undefined {
    return this.subscription.pid;
  }

  get freshness(): Freshness & { readonly synced: boolean } {
    return { synced: this.synced, staleSince: this.staleSince };
  }

  // ------------------------------------------------------------------ reads (no host process)

  /** Every domain, ordered by name. Throws InventoryUnavailableError when not loaded or stale beyond the bound. */
  list(): { readonly vms: readonly InventoryVm[] } & Freshness {
    this.checkReadable();
    this.sorted ??= [...this.domains.values()].sort(byName);
    return { vms: this.sorted, staleSince: this.staleSince };
  }

  /** One domain; VmNotFoundError when the inventory has none by that name. */
  get(name: string): { readonly vm: InventoryVm } & Freshness {
    this.checkReadable();
    const vm = this.domains.get(name);
    if (!vm) throw new VmNotFoundError(name);
    return { vm, staleSince: this.staleSince };
  }

  /** Changes whenever a domain is stored or removed (see persistentDomains' callers). */
  get generation(): number {
    return this.changes;
  }

  /**
   * The persistent domains, for the heartbeat's store publication. Only a current inventory will
   * do (a stale one could delete records of VMs that still exist): throws while stale.
   */
  persistentDomains(): InventoryVm[] {
    if (!this.synced || this.staleSince) throw new InventoryUnavailableError('libvirt is unreachable; the VM inventory is not current');
    return [...this.domains.values()].filter((vm) => vm.persistent && vm.inactiveXml !== undefined);
  }

  private checkReadable(): void {
    if (!this.synced) throw new InventoryUnavailableError('libvirt is unreachable; the VM inventory is not loaded yet; retry later');
    const since = this.staleSince;
    if (since && Date.now() - since.getTime() > this.settings().maxStalenessMs) {
      throw new InventoryUnavailableError(`libvirt is unreachable; the VM inventory is stale since ${since.toISOString()}; retry later`);
    }
  }

  // ------------------------------------------------------------------ changes

  /**
   * A VmService call is about to act on `vm`: changes observed until the returned handle is
   * disposed, within the attribution window (plus `extraMs`, for calls whose effect comes
   * later), carry its actor and trace id.
   */
  attribute(vm: string, actor: MessageInitShape<typeof EventActorSchema>, traceId: string, extraMs = 0): Disposable {
    const now = Date.now();
    // Calls on VMs that then never changed leave entries behind: sweep the expired ones now and then.
    if (this.attributions.size >= 1024) for (const [name, a] of this.attributions) if (a.untilMs < now) this.attributions.delete(name);
    const attribution = { actor, traceId, untilMs: now + this.settings().attributionWindowMs + extraMs };
    this.attributions.set(vm, attribution);
    // Disposed when the call has seen its change (its reply reloaded the VM): later changes, say
    // with plain virsh, are nobody's. A call whose effect comes later (a guest shutdown) keeps the window.
    return {
      [Symbol.dispose]: () => {
        if (this.attributions.get(vm) === attribution) this.attributions.delete(vm);
      },
    };
  }

  /** Reads one domain again (after a VmService change, or an event); serialized and coalesced per domain. */
  reload(name: string, detail = ''): Promise<void> {
    return this.queueReload(name, detail, false);
  }

  /**
   * The domain as libvirt has it now (a VmService change's reply): reloaded, so current even
   * before the first resync or while the rest of the inventory is stale.
   */
  async reloaded(name: string): Promise<InventoryVm> {
    await this.reload(name);
    return this.justRead(name);
  }

  /** A domain as its last reload read it, whatever the inventory's staleness (for a caller that just reloaded it). */
  justRead(name: string): InventoryVm {
    const vm = this.domains.get(name);
    if (!vm) throw new VmNotFoundError(name);
    return vm;
  }

  /**
   * A VmService snapshot call: runs `act` (the libvirt change), then reports VM_SNAPSHOT_CHANGED as
   * `describe` says and reloads the VM. Changes of the current snapshot seen meanwhile (a revert's
   * own lifecycle event reloads the VM) are left to this report, so it is made once.
   */
  async snapshotChange<T>(vm: string, act: () => Promise<T>, describe: (result: T) => { snapshotName: string; change: 'created' | 'reverted' | 'deleted' }): Promise<T> {
    this.snapshotCalls.set(vm, (this.snapshotCalls.get(vm) ?? 0) + 1);
    try {
      const result = await act();
      this.publish(vm, { kind: EventKind.VM_SNAPSHOT_CHANGED, payload: { case: 'vmSnapshot', value: describe(result) } });
      await this.queueReload(vm, '', true);
      return result;
    } finally {
      const left = (this.snapshotCalls.get(vm) ?? 1) - 1;
      if (left > 0) this.snapshotCalls.set(vm, left);
      else this.snapshotCalls.delete(vm);
    }
  }

  /** ListVmSnapshots saw the VM's current snapshot: if the inventory holds another, a change was made behind the daemon's back. */
  observeCurrentSnapshot(vm: string, current: string): void {
    const known = this.domains.get(vm);
    if (known && known.currentSnapshot !== current) void this.reload(vm).catch(() => undefined);
  }

  private queueReload(name: string, detail: string, snapshotReported: boolean): Promise<void> {
    let entry = this.reloads.get(name);
    if (!entry) {
      entry = { coalescer: new Coalescer(), cause: { detail, snapshotReported } };
      this.reloads.set(name, entry);
    } else {
      // Coalesced with a queued reload: the latest detail, and a snapshot report from anyone holds.
      if (detail !== '') entry.cause.detail = detail;
      entry.cause.snapshotReported ||= snapshotReported;
    }
    const slot = entry;
    return slot.coalescer.run(
      async () => {
        const cause = slot.cause;
        slot.cause = { detail: '', snapshotReported: false };
        this.touched.set(name, ++this.sequence);
        this.listed.delete(name);
        try {
          const details = (await this.options.libvirt.domainDetails([name])).get(name) ?? null;
          this.apply(name, details, cause);
          this.metrics.reloads.inc({ result: 'ok' });
        } catch (err) {
          this.metrics.reloads.inc({ result: 'error' });
          this.failed(err, `reloading VM ${JSON.stringify(name)} failed`);
          throw err;
        }
      },
      () => {
        if (this.reloads.get(name) === slot) this.reloads.delete(name);
      },
    );
  }

  private onEvent(event: DomainEventLine): void {
    void this.reload(event.domain, event.event === 'lifecycle' ? event.detail : '').catch(() => undefined);
  }

  /**
   * Makes the inventory match libvirt: one listing process, then details only for domains that are
   * new or whose listed facts changed. Concurrent calls share a queued run.
   */
  resync(): Promise<void> {
    return this.resyncs.run(
      async () => {
        if (this.stopped) return;
        const startedAt = this.sequence;
        const untouched = (name: string) => (this.touched.get(name) ?? 0) <= startedAt;
        try {
          const listing = await this.options.libvirt.domainListing();
          const names = new Set(listing.map((l) => l.name));
          const changed = listing.filter((l) => {
            const before = this.listed.get(l.name);
            return !this.domains.has(l.name) || !before || !sameListing(before, l);
          });
          const details = await this.options.libvirt.domainDetails(changed.map((l) => l.name));
          for (const l of listing) if (untouched(l.name)) this.listed.set(l.name, l);
          for (const l of changed) if (untouched(l.name)) this.apply(l.name, details.get(l.name) ?? null, { detail: '', snapshotReported: false });
          for (const name of [...this.domains.keys()]) if (!names.has(name) && untouched(name)) this.apply(name, null, { detail: '', snapshotReported: false });
          for (const name of [...this.listed.keys()]) if (!names.has(name)) this.listed.delete(name);
          this.synced = true;
          this.staleSince = undefined;
          this.lostAt = undefined;
          this.metrics.resyncs.inc({ result: 'ok' });
          this.report();
        } catch (err) {
          this.metrics.resyncs.inc({ result: 'error' });
          this.failed(err, 'VM inventory resync failed');
          throw err;
        }
      },
      () => undefined,
    );
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.resync()
        .catch(() => undefined)
        .finally(() => this.schedule());
    }, this.settings().resyncIntervalMs);
    this.timer.unref();
  }

  private failed(err: unknown, message: string): void {
    const unreachable = err instanceof ExecError && (err.kind === 'unavailable' || err.kind === 'timeout');
    if (unreachable) {
      this.staleSince ??= this.lostAt ?? new Date();
      this.report();
    }
    this.options.log.warn({ err: err instanceof Error ? err.message : String(err), stale_since: this.staleSince?.toISOString() }, message);
  }

  /** Tells onHealth and the gauge when usability changes. */
  private report(): void {
    const healthy = this.synced && this.staleSince === undefined;
    this.metrics.stale.set(healthy ? 0 : 1);
    this.metrics.domains.set(this.domains.size);
    if (healthy === this.healthy) return;
    this.healthy = healthy;
    const detail = healthy ? undefined : this.synced ? `libvirt unreachable; VM inventory stale since ${this.staleSince?.toISOString() ?? '?'}` : 'VM inventory not loaded yet (libvirt unreachable?)';
    this.options.onHealth?.(healthy, detail);
  }

  // ------------------------------------------------------------------ events

  /** Stores what was read of `name` (null: gone) and reports what changed. */
  private apply(name: string, next: InventoryVm | null, cause: ReloadCause): void {
    const before = this.domains.get(name);
    if (next === null) {
      if (!before) return;
      this.domains.delete(name);
      this.sorted = undefined;
      this.changes++;
      this.publish(name, { kind: EventKind.VM_UNDEFINED, payload: { case: 'vm', value: vmPayload(before) } });
      return;
    }
    this.domains.set(name, next);
    this.sorted = undefined;
    this.changes++;
    if (!before) {
      this.publish(name, { kind: EventKind.VM_DEFINED, payload: { case: 'vm', value: vmPayload(next) } });
      return;
    }
    if (!sameDefinition(before, next)) this.publish(name, { kind: EventKind.VM_DEFINED, payload: { case: 'vm', value: vmPayload(next) } });
    if (before.state !== next.state) {
      this.publish(name, {
        kind: EventKind.VM_STATE_CHANGED,
        payload: { case: 'vmState', value: { state: VM_STATES[next.state], previousState: VM_STATES[before.state], detail: cause.detail } },
      });
    }
    if (before.currentSnapshot !== next.currentSnapshot && !cause.snapshotReported && !this.snapshotCalls.has(name)) {
      // Seen, not told: a new current snapshot was most likely created (a revert looks the same); none left, deleted.
      const change = next.currentSnapshot === '' ? 'deleted' : 'created';
      this.publish(name, { kind: EventKind.VM_SNAPSHOT_CHANGED, payload: { case: 'vmSnapshot', value: { snapshotName: next.currentSnapshot || before.currentSnapshot, change } } });
    }
  }

  private publish(name: string, event: Pick<NewEvent, 'kind' | 'payload'>): void {
    const attribution = this.attributions.get(name);
    const current = attribution && attribution.untilMs >= Date.now() ? attribution : undefined;
    if (attribution && !current) this.attributions.delete(name);
    this.events.publish({
      ...event,
      resource: { kind: ResourceKind.VM, node: this.options.node(), name },
      ...(current ? { actor: current.actor, traceId: current.traceId } : {}),
    });
  }
}

function vmPayload(vm: InventoryVm) {
  return { uuid: vm.uuid, vcpus: vm.vcpus, memoryBytes: BigInt(vm.memoryBytes), state: VM_STATES[vm.state] };
}
