// The live VM inventory against a REAL libvirtd (test driver): changes made behind its back with
// plain virsh show up through libvirt's events (and, for snapshots, which the test driver reports
// no event for, through the snapshot listing or the next event); the event subscription comes
// back with a resync when killed; libvirtd going away makes it stale, then unusable past the
// bound, and it recovers; resyncs cost one process plus the changed domains; reads cost none.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { SpawnEvent } from '../../src/backends/exec.js';
import { Libvirt } from '../../src/backends/libvirt/virsh.js';
import { EventKind } from '../../src/gen/debvisor/v1/event_pb.js';
import { VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import type { NewEvent } from '../../src/events/types.js';
import { InventoryUnavailableError, VmLiveInventory, type InventorySettings } from '../../src/vms/inventory.js';
import { defineTestDomain, startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';

const run = promisify(execFile);
const WAIT = { timeout: 20_000, interval: 25 };
const log = pino({ level: 'silent' });

let lv: TestLibvirt;
let libvirt: Libvirt;
let spawned: SpawnEvent[];
let events: NewEvent[];
let inventory: VmLiveInventory;
let settings: InventorySettings;
const registry = new Registry();

const virsh = (...args: string[]) => run(VIRSH, ['-q', '-c', lv.uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });
const eventsFor = (name: string, kind: EventKind) => events.filter((e) => e.resource?.name === name && e.kind === kind);
async function metric(name: string, labels: Record<string, string> = {}): Promise<number> {
  const values = (await registry.getSingleMetric(name)?.get())?.values ?? [];
  return values.filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((sum, v) => sum + v.value, 0);
}

beforeAll(async () => {
  lv = await startLibvirt();
  await defineTestDomain(lv, 'vm1', '555555555555');
  spawned = [];
  events = [];
  libvirt = new Libvirt({ uri: lv.uri, registry, onSpawn: (e) => spawned.push(e) });
  settings = { resyncIntervalMs: 300_000, maxStalenessMs: 60_000, attributionWindowMs: 10_000, subscriptionBackoffMaxMs: 1_000 };
  inventory = new VmLiveInventory({ libvirt, node: () => 'node-a', log, registry, settings: () => settings, events: { publish: (e) => events.push(e) } });
  expect(() => inventory.list()).toThrow(InventoryUnavailableError);
  inventory.start();
  await vi.waitFor(() => expect(inventory.freshness.synced).toBe(true), WAIT);
});

afterAll(async () => {
  // Undefined when beforeAll failed half-way.
  await (inventory as VmLiveInventory | undefined)?.stop();
  await (lv as TestLibvirt | undefined)?.stop();
});

describe('the live VM inventory', () => {
  it('loads every domain with its details at start, and answers reads without a process', () => {
    const before = spawned.length;
    const { vms, staleSince } = inventory.list();
    expect(staleSince).toBeUndefined();
    expect(vms.map((v) => v.name)).toEqual(['vm1']);
    const { vm } = inventory.get('vm1');
    expect(vm).toMatchObject({ uuid: '11111111-2222-3333-4444-555555555555', state: 'shutoff', vcpus: 1, memoryBytes: 256 * 1024 * 1024, persistent: true, autostart: false, currentSnapshot: '' });
    expect(vm.disks[0]).toMatchObject({ targetDev: 'vda', sourcePath: '/var/lib/libvirt/images/vm1.qcow2' });
    expect(vm.inactiveXml).toContain('<name>vm1</name>');
    expect(() => inventory.get('nosuch')).toThrow('is not in the inventory');
    expect(spawned.length).toBe(before);
    // Initial load: the VM_DEFINED of vm1.
    expect(eventsFor('vm1', EventKind.VM_DEFINED)).toHaveLength(1);
  });

  it('follows define, start, destroy and undefine made behind its back, with no actor', async () => {
    await defineTestDomain(lv, 'side-1', '0000000000b1');
    await vi.waitFor(() => expect(inventory.get('side-1').vm.state).toBe('shutoff'), WAIT);
    expect(eventsFor('side-1', EventKind.VM_DEFINED)[0]).toMatchObject({ resource: { node: 'node-a', name: 'side-1' }, payload: { case: 'vm', value: { uuid: '11111111-2222-3333-4444-0000000000b1', vcpus: 1 } } });

    await virsh('start', 'side-1');
    await vi.waitFor(() => expect(inventory.get('side-1').vm.state).toBe('running'), WAIT);
    const started = eventsFor('side-1', EventKind.VM_STATE_CHANGED).at(-1);
    expect(started).toMatchObject({ payload: { case: 'vmState', value: { state: VmState.RUNNING, previousState: VmState.SHUT_OFF, detail: 'Started Booted' } } });
    expect(started?.actor).toBeUndefined();
    expect(started?.traceId).toBeUndefined();

    await virsh('destroy', 'side-1');
    await vi.waitFor(() => expect(inventory.get('side-1').vm.state).toBe('shutoff'), WAIT);
    expect(eventsFor('side-1', EventKind.VM_STATE_CHANGED).at(-1)).toMatchObject({ payload: { value: { state: VmState.SHUT_OFF, detail: 'Stopped Destroyed' } } });

    await virsh('undefine', 'side-1');
    await vi.waitFor(() => expect(inventory.list().vms.map((v) => v.name)).toEqual(['vm1']), WAIT);
    expect(eventsFor('side-1', EventKind.VM_UNDEFINED)).toHaveLength(1);
  });

  it('attributes changes to the call that announced itself, within the window', async () => {
    inventory.attribute('vm1', { principal: 'spiffe://debvisor/test/op' }, 'trace-1');
    await libvirt.start('vm1');
    await inventory.reload('vm1');
    expect(eventsFor('vm1', EventKind.VM_STATE_CHANGED).at(-1)).toMatchObject({ actor: { principal: 'spiffe://debvisor/test/op' }, traceId: 'trace-1', payload: { value: { state: VmState.RUNNING } } });
    await libvirt.destroy('vm1');
    await vi.waitFor(() => expect(inventory.get('vm1').vm.state).toBe('shutoff'), WAIT);
  });

  it('sees a snapshot made behind its back (no event from the test driver) through the snapshot listing, and reports its own snapshot changes once', async () => {
    const count = eventsFor('vm1', EventKind.VM_SNAPSHOT_CHANGED).length;
    await virsh('snapshot-create-as', '--domain', 'vm1', '--name', 'side-snap');
    // The test driver emits no event: the inventory cannot know yet.
    expect(inventory.get('vm1').vm.currentSnapshot).toBe('');
    const listed = await libvirt.snapshotList('vm1');
    inventory.observeCurrentSnapshot('vm1', listed.find((s) => s.current)?.name ?? '');
    await vi.waitFor(() => expect(inventory.get('vm1').vm.currentSnapshot).toBe('side-snap'), WAIT);
    expect(eventsFor('vm1', EventKind.VM_SNAPSHOT_CHANGED).slice(count)).toMatchObject([{ payload: { case: 'vmSnapshot', value: { snapshotName: 'side-snap', change: 'created' } } }]);

    // Another behind the back, then the next event of the VM (start) brings it in.
    await virsh('snapshot-create-as', '--domain', 'vm1', '--name', 'side-snap-2');
    await virsh('start', 'vm1');
    await vi.waitFor(() => expect(inventory.get('vm1').vm).toMatchObject({ state: 'running', currentSnapshot: 'side-snap-2' }), WAIT);

    // A VmService-style change reports itself, with its kind of change, exactly once.
    const before = eventsFor('vm1', EventKind.VM_SNAPSHOT_CHANGED).length;
    await inventory.snapshotChange(
      'vm1',
      () => libvirt.snapshotRevert('vm1', 'side-snap'),
      () => ({ snapshotName: 'side-snap', change: 'reverted' }),
    );
    expect(inventory.get('vm1').vm.currentSnapshot).toBe('side-snap');
    expect(eventsFor('vm1', EventKind.VM_SNAPSHOT_CHANGED).slice(before)).toMatchObject([{ payload: { value: { snapshotName: 'side-snap', change: 'reverted' } } }]);
    // side-snap was taken with the VM off: the revert left it off.
    expect(inventory.get('vm1').vm.state).toBe('shutoff');
  });

  it('resyncs with one process, plus one per batch of changed domains', async () => {
    // A second inventory with no subscription sees changes only by resyncing.
    const quiet = new VmLiveInventory({ libvirt, node: () => 'node-a', log, registry: new Registry(), settings: () => settings });
    await quiet.resync();
    let before = spawned.length;
    await quiet.resync();
    expect(spawned.length - before).toBe(1);
    await defineTestDomain(lv, 'side-2', '0000000000b2');
    await virsh('start', 'vm1');
    before = spawned.length;
    await quiet.resync();
    // The listing, then ONE process for the details of both changed domains.
    expect(spawned.length - before).toBe(2);
    expect(quiet.list().vms.map((v) => [v.name, v.state])).toEqual([
      ['side-2', 'shutoff'],
      ['vm1', 'running'],
    ]);
    await virsh('destroy', 'vm1');
    await virsh('undefine', 'side-2');
    await vi.waitFor(() => expect(inventory.list().vms.map((v) => [v.name, v.state])).toEqual([['vm1', 'shutoff']]), WAIT);
  });

  it('reads a domain whose name virsh could misparse one command per process', async () => {
    await defineTestDomain(lv, 'odd name;x', '0000000000b3');
    await vi.waitFor(() => expect(inventory.get('odd name;x').vm.uuid).toBe('11111111-2222-3333-4444-0000000000b3'), WAIT);
    const odd = spawned.filter((s) => s.args.includes('odd name;x'));
    expect(odd.length).toBeGreaterThan(0);
    // Never inside a command string: always an argv element of its own after --domain.
    for (const s of odd) expect(s.args[s.args.indexOf('odd name;x') - 1]).toBe('--domain');
    await virsh('undefine', '--domain', 'odd name;x');
    await vi.waitFor(() => expect(() => inventory.get('odd name;x')).toThrow('is not in the inventory'), WAIT);
  });

  it('restarts a killed event subscription and resyncs', async () => {
    const pid = inventory.subscriptionPid;
    expect(pid).toBeDefined();
    const resyncs = await metric('vm_inventory_resyncs_total', { result: 'ok' });
    process.kill(pid!, 'SIGKILL');
    await vi.waitFor(async () => {
      expect(inventory.subscriptionPid).toBeDefined();
      expect(inventory.subscriptionPid).not.toBe(pid);
      expect(await metric('vm_inventory_resyncs_total', { result: 'ok' })).toBeGreaterThan(resyncs);
    }, WAIT);
    // Events flow again through the new process.
    await virsh('start', 'vm1');
    await vi.waitFor(() => expect(inventory.get('vm1').vm.state).toBe('running'), WAIT);
    await virsh('destroy', 'vm1');
    await vi.waitFor(() => expect(inventory.get('vm1').vm.state).toBe('shutoff'), WAIT);
    expect(await metric('libvirt_event_subscription_starts_total')).toBeGreaterThanOrEqual(2);
  });

  it('goes stale when libvirtd stops, refuses reads past the bound, and recovers when it is back', async () => {
    const health: boolean[] = [];
    const dir = lv.dir;
    const watched = new VmLiveInventory({
      libvirt,
      node: () => 'node-a',
      log,
      registry: new Registry(),
      settings: () => settings,
      onHealth: (healthy) => health.push(healthy),
    });
    watched.start();
    try {
      await vi.waitFor(() => expect(watched.freshness.synced).toBe(true), WAIT);
      expect(health.at(-1)).toBe(true);
      await lv.stop();
      await vi.waitFor(() => expect(watched.freshness.staleSince).toBeInstanceOf(Date), WAIT);
      expect(health.at(-1)).toBe(false);
      // Within the bound: the last known VMs, marked stale.
      const stale = watched.list();
      expect(stale.vms.map((v) => v.name)).toEqual(['vm1']);
      expect(stale.staleSince).toBeInstanceOf(Date);
      expect(() => watched.persistentDomains()).toThrow(InventoryUnavailableError);
      // Past the bound: UNAVAILABLE.
      settings = { ...settings, maxStalenessMs: 1 };
      await vi.waitFor(() => expect(() => watched.list()).toThrow(/stale since/), WAIT);
      // libvirtd back (the test driver starts empty): the subscription reconnects and resyncs.
      lv = await startLibvirt({ dir });
      await vi.waitFor(() => expect(watched.freshness.staleSince).toBeUndefined(), { ...WAIT, timeout: 30_000 });
      expect(health.at(-1)).toBe(true);
      // The helper removes the driver's built-in domain once it is up.
      await vi.waitFor(() => expect(watched.list().vms).toEqual([]), WAIT);
    } finally {
      settings = { ...settings, maxStalenessMs: 60_000 };
      await watched.stop();
    }
  });
});
