// The migration building blocks that the real-QEMU e2e suite (test/e2e/migration.test.ts) cannot
// steer into every branch: the exact `virsh migrate` argv, how its failures are classified
// (stderr captured from real libvirt), the rollback's "make sure it runs on the source" against a
// REAL libvirtd (test driver) in every state, target URIs from the template, and the shared-storage
// rule of FailoverVM, and the VM inventory FailoverVM reads (published from a real libvirtd into a
// real embedded store).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { classify, type ExecResult, type SpawnEvent } from '../../src/backends/exec.js';
import { Libvirt, MIGRATE_RULES } from '../../src/backends/libvirt/virsh.js';
import { nodeUri } from '../../src/migration/connections.js';
import { unsharedDisks } from '../../src/migration/failover.js';
import { ensureRunning } from '../../src/migration/migrate.js';
import { InvalidArgumentError } from '../../src/rpc/errors.js';
import { VmInventory } from '../../src/migration/inventory.js';
import { VmLiveInventory } from '../../src/vms/inventory.js';
import pino from 'pino';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'libvirt');
const fixture = (name: string) => readFileSync(join(FIXTURES, name), 'utf8');
const failed = (stderr: string): ExecResult => ({ command: 'virsh', code: 1, signal: null, stdout: '', stderr, truncated: false, durationMs: 1 });

describe('virsh migrate failures', () => {
  it('classifies an aborted job, an unreachable source and an unreachable target', () => {
    expect(classify(failed(fixture('migrate-aborted.stderr')), MIGRATE_RULES)).toMatchObject({ kind: 'cancelled' });
    // virsh could not reach the SOURCE (its own connection fails first).
    expect(classify(failed(fixture('connect-refused.stderr')), MIGRATE_RULES)).toMatchObject({ kind: 'unavailable', publicMessage: 'the source libvirt is unreachable; retry later' });
    // The source libvirtd could not reach the TARGET (--p2p): docs/libvirt-migration.md case 6.
    expect(classify(failed("error: Failed to connect socket to '/tmp/mig/nonexistent': No such file or directory\n"), MIGRATE_RULES)).toMatchObject({
      kind: 'unavailable',
      publicMessage: "the target node's libvirt is unreachable from the source",
    });
    expect(classify(failed("error: operation failed: domain 'mig3' already exists with uuid 1\n"), MIGRATE_RULES)).toMatchObject({ kind: 'exists' });
  });
});

describe('target URIs from migration.target_uri_template', () => {
  it('substitutes a validated hostname and refuses anything else, naming the field', () => {
    expect(nodeUri('qemu+ssh://{hostname}/system', 'hv-2.example.org')).toBe('qemu+ssh://hv-2.example.org/system');
    expect(nodeUri('qemu+unix:///session?socket=/run/{hostname}/sock', 'node-b')).toBe('qemu+unix:///session?socket=/run/node-b/sock');
    for (const bad of ['a/b', 'user@host', '-oProxyCommand=x', 'a b', 'host:22', '', '..']) {
      expect(() => nodeUri('qemu+ssh://{hostname}/system', bad, 'target_node'), bad).toThrow(InvalidArgumentError);
      expect(() => nodeUri('qemu+ssh://{hostname}/system', bad, 'target_node'), bad).toThrow(/target_node/);
    }
  });
});

describe('FailoverVM shared-storage rule', () => {
  it('accepts network RBD disks and empty cdroms, and names every other disk', () => {
    expect(unsharedDisks(fixture('domain-rich.xml'))).toEqual([
      'sda (file /var/lib/libvirt/images/debian-12.iso)',
      'vdb (block /dev/vg0/web-01-data)',
      'vdc (volume images/scratch.qcow2)',
    ]);
    expect(unsharedDisks(fixture('qemu-diskless.xml'))).toEqual([]);
    const rbdOnly = fixture('domain-rich.xml').replace(/<disk type='(file|block|volume)'[\s\S]*?<\/disk>/g, '');
    expect(unsharedDisks(rbdOnly)).toEqual([]);
  });
});

describe('against a real libvirtd (test driver)', () => {
  let lv: TestLibvirt | undefined;
  let libvirt: Libvirt;
  const spawned: SpawnEvent[] = [];

  beforeAll(async () => {
    lv = await startLibvirt();
    libvirt = new Libvirt({ uri: lv.uri, registry: new Registry(), onSpawn: (event) => spawned.push(event) });
    await libvirt.defineXml(fixture('test-domain.xml'));
  });

  afterAll(async () => {
    await lv?.stop();
  });

  it('runs virsh migrate with exactly the live, persistent, peer-to-peer, tunnelled flags', async () => {
    spawned.length = 0;
    // The test driver cannot migrate: only the argv is of interest here.
    await libvirt.migrate('vm1', 'qemu+ssh://node-b/system', { compressed: true, bandwidthMiBs: 5 }).catch(() => undefined);
    await libvirt.migrate('vm1', 'qemu+ssh://node-b/system').catch(() => undefined);
    expect(spawned.map((s) => s.args)).toEqual([
      ['--connect', lv!.uri, 'migrate', '--live', '--persistent', '--undefinesource', '--p2p', '--tunnelled', '--compressed', '--bandwidth', '5', '--domain', 'vm1', '--desturi', 'qemu+ssh://node-b/system'],
      ['--connect', lv!.uri, 'migrate', '--live', '--persistent', '--undefinesource', '--p2p', '--tunnelled', '--domain', 'vm1', '--desturi', 'qemu+ssh://node-b/system'],
    ]);
    await expect(libvirt.migrate('vm1', 'qemu+ssh://node-b/system', { bandwidthMiBs: -1 })).rejects.toThrow(/bandwidth_mib_s/);
    await expect(libvirt.migrate('-vm1', 'qemu+ssh://node-b/system')).rejects.toThrow(/vm_name/);
  });

  it('rollback makes sure the VM runs on the source, whatever state the failed migration left it in', async () => {
    expect(await libvirt.state('vm1')).toBe('shutoff');
    expect(await ensureRunning(libvirt, 'vm1', 'node-a')).toEqual({ running: true, report: 'the VM was shut off on node-a and has been started again there' });
    expect(await libvirt.state('vm1')).toBe('running');
    expect(await ensureRunning(libvirt, 'vm1', 'node-a')).toEqual({ running: true, report: 'the VM is still running on node-a' });
    await libvirt.executor.run('virsh', ['--connect', libvirt.uri, 'suspend', '--domain', 'vm1']);
    expect(await libvirt.state('vm1')).toBe('paused');
    expect(await ensureRunning(libvirt, 'vm1', 'node-a')).toEqual({ running: true, report: 'the VM was paused on node-a and has been resumed' });
    expect(await libvirt.state('vm1')).toBe('running');
    expect(await ensureRunning(libvirt, 'gone', 'node-a')).toEqual({ running: false, report: 'the VM is no longer defined on node-a' });
    const unreachable = await ensureRunning(libvirt.connectTo('test+unix:///default?socket=/nonexistent/sock'), 'vm1', 'node-a');
    expect(unreachable.running).toBe(false);
    expect(unreachable.report).toMatch(/^rollback could not make sure the VM runs on node-a/);
  });

  it('publishes persistent domains to the inventory, rewrites only changes, drops undefined ones, and hands a record out once', async () => {
    const harness: StoreHarness = await embeddedHarness();
    const store: Store = await harness.open();
    try {
      const repos = createRepositories(store);
      let nowMs = Date.parse('2026-12-07T12:00:00Z');
      const inventory = new VmInventory(repos.vmInventory, () => new Date(nowMs));
      // The live inventory, resynced by hand here (its event subscription is not started).
      const live = new VmLiveInventory({ libvirt, node: () => 'node-a', log: pino({ level: 'silent' }), registry: new Registry() });
      await live.resync();
      spawned.length = 0;
      await inventory.publish('node-a', live);
      // Read from the live inventory: no host process at all.
      expect(spawned).toEqual([]);
      const first = await inventory.get('node-a', 'vm1');
      expect(first?.value).toMatchObject({ node: 'node-a', name: 'vm1', uuid: '11111111-2222-3333-4444-555555555555', state: 'running', memory_bytes: 256 * 1024 * 1024 });
      expect(first?.value.xml).toContain('<name>vm1</name>');
      // Nothing changed: nothing rewritten.
      await inventory.publish('node-a', live);
      expect((await inventory.get('node-a', 'vm1'))?.modRevision).toBe(first?.modRevision);
      // Nothing changed in libvirt, the store is not even compared (a record lost meanwhile stays
      // lost) until the periodic full publication, five minutes on.
      await repos.vmInventory.delete(['node-a', 'vm1']);
      await inventory.publish('node-a', live);
      expect(await inventory.get('node-a', 'vm1')).toBeUndefined();
      nowMs += 300_000;
      await inventory.publish('node-a', live);
      expect((await inventory.get('node-a', 'vm1'))?.value.name).toBe('vm1');
      // A state change is published.
      await libvirt.destroy('vm1');
      await live.resync();
      await inventory.publish('node-a', live);
      expect((await inventory.get('node-a', 'vm1'))?.value.state).toBe('shutoff');
      // Claimed once: the second claim finds nothing; restore puts it back.
      const claimed = await inventory.claim('node-a', 'vm1');
      await expect(inventory.claim('node-a', 'vm1')).rejects.toMatchObject({ code: 'NOT_FOUND' });
      await inventory.restore(claimed);
      expect((await inventory.get('node-a', 'vm1'))?.value.name).toBe('vm1');
      // Undefined on the node: its record goes.
      await libvirt.undefine('vm1');
      await live.resync();
      await inventory.publish('node-a', live);
      expect(await inventory.get('node-a', 'vm1')).toBeUndefined();
    } finally {
      await store.close();
      await harness.cleanup();
    }
  });
});
