// The libvirt backend against a REAL libvirtd (test driver, unprivileged, see test/support/libvirt.ts):
// the VM life cycle, snapshots, error mapping to gRPC codes, and names refused before any spawn.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecError, spawnCount } from '../../src/backends/exec.js';
import { VmStateError } from '../../src/backends/libvirt/errors.js';
import { Libvirt } from '../../src/backends/libvirt/virsh.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';
import { startLibvirt, type TestLibvirt } from '../support/libvirt.js';

const DOMAIN_XML = readFileSync(join(import.meta.dirname, 'fixtures', 'libvirt', 'test-domain.xml'), 'utf8');

let lv: TestLibvirt | undefined;
let registry: Registry;
let virsh: Libvirt;

beforeAll(async () => {
  const started = await startLibvirt();
  lv = started;
  registry = new Registry();
  virsh = new Libvirt({ uri: started.uri, registry });
});

afterAll(async () => {
  await lv?.stop();
});

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('Libvirt against the test driver', () => {
  it('starts empty (the built-in test domain is gone)', async () => {
    expect(await virsh.listDomains()).toEqual([]);
    await virsh.ping();
  });

  it('runs the full life cycle: define, start, state, shutdown, start, reboot, destroy', async () => {
    expect(await virsh.defineXml(DOMAIN_XML)).toBe('vm1');
    let vm = await virsh.getDomain('vm1');
    expect(vm).toMatchObject({
      name: 'vm1',
      uuid: '11111111-2222-3333-4444-555555555555',
      state: 'shutoff',
      vcpus: 1,
      memoryBytes: 256 * 1024 * 1024,
      autostart: false,
      persistent: true,
      currentSnapshot: '',
    });
    expect(vm.disks).toEqual([{ targetDev: 'vda', sourcePath: '/var/lib/libvirt/images/vm1.qcow2', format: '', device: 'disk', sourceType: 'file', protocol: '' }]);
    expect(vm.interfaces[0]).toMatchObject({ type: 'network', source: 'default' });

    await virsh.start('vm1');
    expect(await virsh.state('vm1')).toBe('running');
    await virsh.shutdown('vm1');
    expect(await virsh.state('vm1')).toBe('shutoff');
    await virsh.start('vm1');
    await virsh.reboot('vm1');
    expect(await virsh.state('vm1')).toBe('running');
    await virsh.destroy('vm1');
    expect(await virsh.state('vm1')).toBe('shutoff');
    await virsh.start('vm1');
    await virsh.destroy('vm1', { graceful: true });
    vm = await virsh.getDomain('vm1');
    expect(vm.state).toBe('shutoff');
  });

  it('shutdownAndWait returns once the VM is off', async () => {
    await virsh.start('vm1');
    const polled: string[] = [];
    const r = await virsh.shutdownAndWait('vm1', { waitMs: 5_000, pollMs: 50, force: true, onPoll: (s) => polled.push(s) });
    expect(r).toEqual({ state: 'shutoff', forced: false });
    expect(polled.at(-1)).toBe('shutoff');
  });

  it('lists VMs with state, autostart and persistence, ordered by name', async () => {
    await virsh.defineXml(DOMAIN_XML.replace('<name>vm1</name>', '<name>a-vm</name>').replace('11111111-2222-3333-4444-555555555555', '11111111-2222-3333-4444-666666666666'));
    await virsh.start('a-vm');
    const list = await virsh.listDomains();
    expect(list).toEqual([
      { name: 'a-vm', uuid: '11111111-2222-3333-4444-666666666666', state: 'running', vcpus: 1, memoryBytes: 256 * 1024 * 1024, autostart: false, persistent: true },
      { name: 'vm1', uuid: '11111111-2222-3333-4444-555555555555', state: 'shutoff', vcpus: 1, memoryBytes: 256 * 1024 * 1024, autostart: false, persistent: true },
    ]);
    await virsh.destroy('a-vm');
    await virsh.undefine('a-vm');
  });

  it('creates, lists, reverts and deletes snapshots', async () => {
    await virsh.start('vm1');
    const s1 = await virsh.snapshotCreate('vm1', 'snap1', 'first one');
    expect(s1).toMatchObject({ name: 'snap1', vmName: 'vm1', description: 'first one', vmState: 'running', parent: '', current: true });
    await virsh.destroy('vm1');
    const s2 = await virsh.snapshotCreate('vm1', 'snap2', '-looks like an option');
    expect(s2).toMatchObject({ name: 'snap2', description: '-looks like an option', vmState: 'shutoff', parent: 'snap1', current: true });
    const s3 = await virsh.snapshotCreate('vm1', 'snap3');
    expect(s3.description).toBe('');

    const list = await virsh.snapshotList('vm1');
    expect(list.map((s) => [s.name, s.parent, s.current])).toEqual([
      ['snap1', '', false],
      ['snap2', 'snap1', false],
      ['snap3', 'snap2', true],
    ]);
    expect((await virsh.getDomain('vm1')).currentSnapshot).toBe('snap3');

    await virsh.snapshotRevert('vm1', 'snap1');
    expect(await virsh.state('vm1')).toBe('running');
    expect(await virsh.snapshotCurrent('vm1')).toBe('snap1');

    expect(await virsh.snapshotDelete('vm1', 'snap2', { children: true })).toEqual(['snap2', 'snap3']);
    expect(await virsh.snapshotNames('vm1')).toEqual(['snap1']);
    expect(await virsh.snapshotDelete('vm1', 'snap1')).toEqual(['snap1']);
    expect(await virsh.snapshotList('vm1')).toEqual([]);
    expect(await virsh.snapshotCurrent('vm1')).toBe('');
    await virsh.destroy('vm1');
  });

  it('maps an unknown VM or snapshot to NOT_FOUND', async () => {
    for (const call of [() => virsh.getDomain('nosuch'), () => virsh.start('nosuch'), () => virsh.state('nosuch'), () => virsh.snapshotList('nosuch')]) {
      const err = await rejection(call());
      expect(err).toBeInstanceOf(ExecError);
      expect((err as ExecError).kind).toBe('not_found');
      expect(toStatus(err, 't').code).toBe(Status.NOT_FOUND);
    }
    const err = await rejection(virsh.snapshotRevert('vm1', 'nosnap'));
    expect(toStatus(err, 't')).toMatchObject({ code: Status.NOT_FOUND, details: 'the VM snapshot does not exist (trace_id=t)' });
  });

  it('maps a duplicate snapshot to ALREADY_EXISTS', async () => {
    await virsh.snapshotCreate('vm1', 'dup');
    const err = await rejection(virsh.snapshotCreate('vm1', 'dup'));
    expect(toStatus(err, 't').code).toBe(Status.ALREADY_EXISTS);
    await virsh.snapshotDelete('vm1', 'dup');
  });

  it('refuses start on a running VM and shutdown/destroy/reboot on a stopped one with FAILED_PRECONDITION naming the state', async () => {
    await virsh.start('vm1');
    const running = await rejection(virsh.start('vm1'));
    expect(running).toBeInstanceOf(VmStateError);
    expect(running).toMatchObject({ vmName: 'vm1', state: 'running' });
    expect(toStatus(running, 't')).toMatchObject({ code: Status.FAILED_PRECONDITION, details: 'cannot start VM "vm1": it is running (trace_id=t)' });
    expect((running as VmStateError).cause).toBeInstanceOf(ExecError);

    await virsh.destroy('vm1');
    for (const [op, p] of [
      ['shut down', () => virsh.shutdown('vm1')],
      ['destroy', () => virsh.destroy('vm1')],
      ['reboot', () => virsh.reboot('vm1')],
    ] as const) {
      const err = await rejection(p());
      expect(err).toMatchObject({ name: 'VmStateError', state: 'shutoff', operation: op });
      expect(toStatus(err, 't').details).toBe(`cannot ${op} VM "vm1": it is shut off (trace_id=t)`);
    }
  });

  it('refuses injection names and bad descriptions before anything is spawned', async () => {
    const before = spawnCount();
    for (const bad of ['--all', 'vm1; rm -rf /', 'a/b', '../etc', 'vm\n1', '', 'ｖｍ', '$(id)']) {
      expect(await rejection(virsh.start(bad))).toBeInstanceOf(InvalidArgumentError);
      expect(await rejection(virsh.getDomain(bad))).toBeInstanceOf(InvalidArgumentError);
      expect(await rejection(virsh.snapshotCreate('vm1', bad))).toBeInstanceOf(InvalidArgumentError);
      expect(await rejection(virsh.snapshotDelete(bad, 'snap1'))).toBeInstanceOf(InvalidArgumentError);
    }
    expect(await rejection(virsh.snapshotCreate('vm1', 's', 'line\nbreak'))).toBeInstanceOf(InvalidArgumentError);
    expect(await rejection(virsh.snapshotCreate('vm1', 's', 'x'.repeat(1025)))).toBeInstanceOf(InvalidArgumentError);
    expect(await rejection(virsh.defineXml(DOMAIN_XML.replace('<name>vm1</name>', '<name>-x</name>')))).toBeInstanceOf(InvalidArgumentError);
    expect(spawnCount()).toBe(before);
  });

  it('domjobinfo is unsupported by the test driver (INTERNAL, not a crash)', async () => {
    const err = await rejection(virsh.jobInfo('vm1'));
    expect(err).toMatchObject({ kind: 'failed' });
  });
});

describe('Libvirt with libvirtd stopped', () => {
  it('maps an unreachable libvirtd to UNAVAILABLE and counts it', async () => {
    const gone = await startLibvirt();
    const reg = new Registry();
    const client = new Libvirt({ uri: gone.uri, registry: reg });
    await client.ping();
    await gone.stop();
    const err = await rejection(client.getDomain('vm1'));
    expect(err).toMatchObject({ kind: 'unavailable' });
    expect(toStatus(err, 't')).toMatchObject({ code: Status.UNAVAILABLE, details: 'libvirt is unreachable; retry later (trace_id=t)' });
    expect(await rejection(client.listDomains())).toMatchObject({ kind: 'unavailable' });
    const metric = await reg.getSingleMetric('backend_connection_errors_total')?.get();
    expect(metric?.values.find((v) => v.labels.backend_service === 'libvirt')?.value).toBeGreaterThanOrEqual(2);
  });
});
