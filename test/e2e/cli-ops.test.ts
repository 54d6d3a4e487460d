// debvisorctl operation, vm, node, migration, volume and snapshot commands end to end: the built CLI
// (dist/cli/debvisorctl.js) against a real daemon with the test service and a real
// test-driver libvirtd. Storage: without a backend (bad input, "RBD is not configured"),
// then on a real metadata-only LVM volume group (test/support/lvm.ts). No Ceph here.
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { NodeHealth, NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { ctlOn, ctlProcess } from '../support/ctl.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { defineTestDomain, startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { startLvm, writeSnapshotMetadata, type TestLvm } from '../support/lvm.js';
import { MIB, NO_RATE_LIMITS } from '../support/storage.js';
import { startTestingDaemon } from '../support/testing.js';

const T = { timeoutMs: 5000 };

let lv: TestLibvirt;
let daemon: RunningDaemon;

const ctl = (...args: string[]) => ctlOn(daemon, ...args);

async function startTestOperation(durationMs: number, failMessage = '', latch = ''): Promise<string> {
  const testing = await clientFor(TestingService, daemon);
  try {
    const started = await testing.startTestOperation({ duration: durationFromMs(durationMs), steps: 4, failMessage, latch }, T);
    return started.operation!.id;
  } finally {
    testing.close();
  }
}

async function openTestLatch(latch: string): Promise<void> {
  const testing = await clientFor(TestingService, daemon);
  try {
    await testing.openTestLatch({ latch }, T);
  } finally {
    testing.close();
  }
}

beforeAll(async () => {
  lv = await startLibvirt();
  await defineTestDomain(lv, 'vm1', '555555555555');
  await defineTestDomain(lv, 'web-1', '000000000001');
  daemon = await startTestingDaemon({ env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri } });
});

afterAll(async () => {
  // Undefined when beforeAll failed half-way.
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await (lv as TestLibvirt | undefined)?.stop();
});

describe('debvisorctl whoami, apikey and role on the shared command plumbing', () => {
  it('still answer with the admin identity', async () => {
    const me = await ctl('-o', 'json', 'whoami');
    expect(me.code).toBe(0);
    expect(JSON.parse(me.stdout)).toMatchObject({ principalId: daemon.pki.adminPrincipal });
    const keys = await ctl('apikey', 'list');
    expect(keys.code).toBe(0);
    expect(keys.stdout).toBe('(none)\n');
    const roles = await ctl('role', 'list');
    expect(roles.code).toBe(0);
    expect(roles.stdout).toContain('admin');
    const revoke = await ctl('apikey', 'revoke', 'no-such-key');
    expect(revoke.code).toBe(1);
    expect(revoke.stderr).toMatch(/^debvisorctl: [A-Z_]+: /);
  });
});

describe('debvisorctl operation', () => {
  it('waits for an operation, printing progress, then its final state: exit 0', async () => {
    // Held after its first step until the CLI has printed a progress line: no race with the clock.
    const id = await startTestOperation(400, '', 'cli-wait');
    const waiting = ctlProcess(daemon, 'operation', 'wait', id);
    await vi.waitFor(() => {
      expect(waiting.stdout()).toMatch(/^running \d+%/m);
    }, { timeout: 120_000, interval: 100 });
    await openTestLatch('cli-wait');
    const waited = await waiting.done;
    expect(waited.code).toBe(0);
    expect(waited.stdout).toMatch(/^running \d+%/m);
    expect(waited.stdout).toMatch(/^state: +succeeded$/m);
    expect(waited.stdout).toMatch(/^progress: +100%$/m);

    const got = await ctl('-o', 'json', 'operation', 'get', id);
    expect(got.code).toBe(0);
    expect(JSON.parse(got.stdout)).toMatchObject({ id, kind: 'OPERATION_KIND_TEST', state: 'OPERATION_STATE_SUCCEEDED' });
    // The target is printed once, as KIND:NAME or as the daemon names it; never "unspecified".
    const text = await ctl('operation', 'get', id);
    expect(text.stdout).toMatch(/^target: +\S+$/m);
    expect(text.stdout).not.toContain('unspecified');

    const listed = await ctl('operation', 'list', '--state', 'succeeded', '--kind', 'test');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toContain(id);
  });

  it('exits 1 when the operation fails and 4 when it is still running at --timeout', async () => {
    const failing = await ctl('operation', 'wait', await startTestOperation(300, 'disk on fire'));
    expect(failing.code).toBe(1);
    expect(failing.stdout).toMatch(/^state: +failed$/m);
    expect(failing.stdout).toContain('disk on fire');

    // Held after its first step: it stays running until cancelled, however slow the machine.
    const slow = await startTestOperation(400, '', 'cli-timeout');
    await vi.waitFor(async () => {
      expect(JSON.parse((await ctl('-o', 'json', 'operation', 'get', slow)).stdout)).toMatchObject({ state: 'OPERATION_STATE_RUNNING' });
    }, { timeout: 120_000, interval: 200 });
    const timedOut = await ctl('-o', 'json', 'operation', 'wait', slow, '--timeout', '1');
    expect(timedOut.code).toBe(4);
    expect(JSON.parse(timedOut.stdout)).toMatchObject({ id: slow, state: 'OPERATION_STATE_RUNNING' });
    expect(timedOut.stderr).toContain(`operation ${slow} is still running after 1s`);

    const cancelled = await ctl('operation', 'cancel', slow);
    expect(cancelled.code).toBe(0);
    expect(cancelled.stdout).toMatch(/^cancel requested: +yes$/m);
    const after = await ctl('operation', 'wait', slow, '--timeout', '120');
    expect(after.code).toBe(1);
    expect(after.stdout).toMatch(/^state: +cancelled$/m);
  });

  it('prints the gRPC code and the trace id of a failed call, exit 1', async () => {
    const missing = await ctl('operation', 'get', '00000000-0000-0000-0000-000000000000');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^debvisorctl: NOT_FOUND: .*\(trace_id=[0-9a-f]+\)\n$/);
    const badState = await ctl('operation', 'list', '--state', 'sleeping');
    expect(badState.code).not.toBe(0);
    expect(badState.stderr).toContain('expected one of pending, running, succeeded, failed, cancelled');
  });
});

describe('debvisorctl vm', () => {
  it('lists with state and name filters, and gets one VM', async () => {
    const all = await ctl('vm', 'list');
    expect(all.code).toBe(0);
    expect(all.stdout).toMatch(/vm1 .*shut_off .*256 MiB/);
    expect(all.stdout).toContain('web-1');

    const web = await ctl('-o', 'json', 'vm', 'list', '--name', 'web-*', '--state', 'shut_off');
    expect((JSON.parse(web.stdout) as { vms: { name: string }[] }).vms.map((vm) => vm.name)).toEqual(['web-1']);

    const one = await ctl('vm', 'get', 'vm1');
    expect(one.code).toBe(0);
    expect(one.stdout).toMatch(/^uuid: +11111111-2222-3333-4444-555555555555$/m);
    expect(one.stdout).toContain('/var/lib/libvirt/images/vm1.qcow2');
  });

  it('starts, reboots, destroys, and shuts down with --wait on the operation', async () => {
    expect((await ctl('vm', 'start', 'vm1')).stdout).toMatch(/^state: +running$/m);
    expect((await ctl('vm', 'reboot', 'vm1')).stdout).toMatch(/^state: +running$/m);
    expect((await ctl('vm', 'destroy', 'vm1')).stdout).toMatch(/^state: +shut_off$/m);

    await ctl('vm', 'start', 'vm1');
    const shutdown = await ctl('vm', 'shutdown', 'vm1', '--wait', '--force', '--timeout', '5');
    expect(shutdown.code).toBe(0);
    expect(shutdown.stdout).toMatch(/^kind: +shutdown_vm$/m);
    expect(shutdown.stdout).toMatch(/^state: +succeeded$/m);
    expect(shutdown.stdout).toMatch(/^forced: +false$/m);
  });

  it('reports wrong-state and unknown VMs with their gRPC code; rejects --force without --wait', async () => {
    const off = await ctl('vm', 'shutdown', 'vm1');
    expect(off.code).toBe(1);
    expect(off.stderr).toMatch(/^debvisorctl: FAILED_PRECONDITION: .*shut off/);
    const missing = await ctl('vm', 'get', 'nosuch');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^debvisorctl: NOT_FOUND: /);
    const force = await ctl('vm', 'shutdown', 'vm1', '--force');
    expect(force.code).toBe(2);
    expect(force.stderr).toBe('debvisorctl: --force needs --wait\n');
  });
});

describe('debvisorctl vm snapshot', () => {
  it('creates, lists, reverts to and deletes a VM snapshot; refuses bad use with 2 and a missing one with 1', async () => {
    const created = await ctl('vm', 'snapshot', 'create', 'web-1', 'cli-snap', '-d', 'before the upgrade');
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^name: +cli-snap$/m);
    expect(created.stdout).toMatch(/^description: +before the upgrade$/m);
    // The same request id again: the first answer, not a second snapshot (nor a duplicate error).
    const again = await ctl('vm', 'snapshot', 'create', 'web-1', 'cli-snap2', '--request-id', 'cli-snap-req-1');
    expect(again.code, again.stderr).toBe(0);
    expect((await ctl('vm', 'snapshot', 'create', 'web-1', 'cli-snap2', '--request-id', 'cli-snap-req-1')).code).toBe(0);

    const listed = await ctl('-o', 'wide', 'vm', 'snapshot', 'list', 'web-1');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/cli-snap .*before the upgrade/);
    const json = await ctl('-o', 'json', 'vm', 'snapshot', 'list', 'web-1');
    expect((JSON.parse(json.stdout) as { snapshots: { name: string }[] }).snapshots.map((each) => each.name)).toEqual(['cli-snap', 'cli-snap2']);

    const reverted = await ctl('vm', 'snapshot', 'revert', 'web-1', 'cli-snap');
    expect(reverted.code, reverted.stderr).toBe(0);
    expect(reverted.stdout).toMatch(/^current snapshot: +cli-snap$/m);

    const deleted = await ctl('vm', 'snapshot', 'delete', 'web-1', 'cli-snap', '--children');
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(deleted.stdout).toMatch(/^deleted cli-snap/);

    const usage = await ctl('vm', 'snapshot', 'create', 'web-1');
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain("missing required argument 'snapshot'");
    const missing = await ctl('vm', 'snapshot', 'revert', 'web-1', 'no-such-snap');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^debvisorctl: NOT_FOUND: /);
  });
});

describe('debvisorctl migration', () => {
  it('check explains a refusal (exit 1); start and failover report the daemon refusal; a bad bandwidth is refused locally', async () => {
    const checked = await ctl('migration', 'check', 'vm1', '--to', 'ghost-node');
    expect(checked.code).toBe(1);
    expect(checked.stdout).toMatch(/^allowed: +false$/m);
    expect(checked.stdout).toMatch(/^reasons: .*ghost-node is not registered/m);

    const started = await ctl('migration', 'start', 'vm1', '--to', 'ghost-node');
    expect(started.code).toBe(1);
    expect(started.stderr).toMatch(/^debvisorctl: [A-Z_]+: .*\(trace_id=[0-9a-f]+\)\n$/);

    const failover = await ctl('migration', 'failover', 'vm1', '--from', 'ghost-node');
    expect(failover.code).toBe(1);
    expect(failover.stderr).toMatch(/^debvisorctl: [A-Z_]+: .*ghost-node.*\(trace_id=[0-9a-f]+\)\n$/);

    const bandwidth = await ctl('migration', 'start', 'vm1', '--to', 'hv-2', '--bandwidth', 'fast');
    expect(bandwidth.code).not.toBe(0);
    expect(bandwidth.stderr).toContain("option '--bandwidth <MiB/s>' argument 'fast' is invalid. expected a whole number");
  });
});

describe('debvisorctl node', () => {
  it('lists registered nodes and gets one; an unknown one is NOT_FOUND', async () => {
    const nodes = await clientFor(NodeService, daemon);
    try {
      await nodes.registerNode({ hostname: 'hv-cli', ip: '10.0.0.31', zone: 'z1', version: '1.2.3', labels: { gpu: 'no' } }, T);
      await nodes.heartbeat({ hostname: 'hv-cli', status: NodeHealth.HEALTHY }, T);
    } finally {
      nodes.close();
    }
    const listed = await ctl('-o', 'wide', 'node', 'list');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/hv-cli .*10\.0\.0\.31 .*z1 .*true .*healthy .*1\.2\.3/);

    const one = await ctl('node', 'get', 'hv-cli');
    expect(one.code).toBe(0);
    expect(one.stdout).toMatch(/^labels: +gpu=no$/m);
    expect(one.stdout).toMatch(/^online: +true$/m);
    const json = await ctl('-o', 'json', 'node', 'get', 'hv-cli');
    expect(JSON.parse(json.stdout)).toMatchObject({ node: { hostname: 'hv-cli', ip: '10.0.0.31' } });

    const missing = await ctl('node', 'get', 'nosuch');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^debvisorctl: NOT_FOUND: /);
  });
});

describe('debvisorctl volume and snapshot without Ceph or LVM', () => {
  it('refuses bad input before calling the daemon', async () => {
    const refusals: [string[], string][] = [
      [['snapshot', 'list', 'zfs', 'tank', 'data'], 'expected one of lvm, rbd'],
      [['snapshot', 'prune', 'rbd', 'vms', 'disk0', '--keep-last', '-1'], 'expected a whole number'],
      [['snapshot', 'delete', 'rbd', 'vms', 'disk0'], "missing required argument 'snapshot'"],
      [['volume', 'provision', 'rbd', 'vms', 'disk1', '--size', '1GiB'], 'give exactly one of --image and --from-image'],
      [['volume', 'provision', 'rbd', 'vms', 'disk1', '--size', '1GiB', '--image', 'a.raw', '--from-image', 'debian-12'], 'give exactly one of --image and --from-image'],
    ];
    for (const [args, problem] of refusals) {
      const refused = await ctl(...args);
      expect(refused.code, args.join(' ')).not.toBe(0);
      expect(refused.stderr, args.join(' ')).toContain(problem);
    }
    const keepsNothing = await ctl('snapshot', 'prune', 'rbd', 'vms', 'disk0');
    expect(keepsNothing.code).toBe(2);
    expect(keepsNothing.stderr).toBe('debvisorctl: give at least one of --keep-last, --keep-daily, --keep-weekly\n');
  });

  it('reports an unconfigured backend with FAILED_PRECONDITION and the trace id', async () => {
    for (const args of [
      ['volume', 'list', '--backend', 'rbd'],
      ['snapshot', 'list', 'rbd', 'vms', 'disk0'],
      ['snapshot', 'prune', 'rbd', 'vms', 'disk0', '--keep-last', '2', '--dry-run'],
      ['snapshot', 'create', 'rbd', 'vms', 'disk0', 's1'],
      ['snapshot', 'delete', 'rbd', 'vms', 'disk0', 's1'],
      ['volume', 'provision', 'rbd', 'vms', 'disk1', '--image', 'linux.qcow2', '--size', '1GiB'],
      ['template', 'snapshot', 'vms', 'golden', 'v1'],
      ['template', 'clone', 'vms', 'golden', 'v1', 'vms', 'disk2'],
    ]) {
      const result = await ctl(...args);
      expect(result.code, args.join(' ')).toBe(1);
      expect(result.stderr, args.join(' ')).toMatch(/^debvisorctl: FAILED_PRECONDITION: RBD is not configured on this node .*\(trace_id=[0-9a-f]+\)\n$/);
    }
  });
});

describe('debvisorctl volume and snapshot on a real LVM volume group', () => {
  let lvm: TestLvm;
  let lvmDaemon: RunningDaemon;

  beforeAll(async () => {
    lvm = await startLvm({ sizeMiB: 256 });
    lvmDaemon = await startDaemon({ env: { DEBVISOR_RPCD_LVM_VGS: lvm.vg, DEBVISOR_RPCD_LVM_SYSTEM_DIR: lvm.systemDir }, config: NO_RATE_LIMITS });
    const storage = await clientFor(StorageService, lvmDaemon);
    try {
      await storage.createVolume({ volume: { backend: StorageBackend.LVM, pool: lvm.vg, name: 'db' }, sizeBytes: 8n * MIB }, T);
    } finally {
      storage.close();
    }
    const hour = 3_600_000;
    for (const [name, ageHours] of [['db-old', 50], ['db-mid', 26], ['db-new', 1]] as const) {
      await writeSnapshotMetadata(lvm, { origin: 'db', name, createTime: new Date(Date.now() - ageHours * hour) });
    }
  });

  afterAll(async () => {
    await (lvmDaemon as RunningDaemon | undefined)?.cleanup();
    await (lvm as TestLvm | undefined)?.stop();
  });

  it('lists volumes and snapshots, and prunes with --dry-run and for real, printing kept and deleted', async () => {
    const volumes = await ctlOn(lvmDaemon, 'volume', 'list', '--backend', 'lvm', '--name', 'd*');
    expect(volumes.code).toBe(0);
    expect(volumes.stdout).toMatch(new RegExp(`lvm .*${lvm.vg} .*db .*8 MiB`));
    expect(volumes.stdout).not.toContain('db-old');

    const snapshots = await ctlOn(lvmDaemon, '-o', 'json', 'snapshot', 'list', 'lvm', lvm.vg, 'db');
    expect((JSON.parse(snapshots.stdout) as { snapshots: { name: string }[] }).snapshots.map((each) => each.name)).toEqual(['db-old', 'db-mid', 'db-new']);

    const dry = await ctlOn(lvmDaemon, 'snapshot', 'prune', 'lvm', lvm.vg, 'db', '--keep-last', '1', '--dry-run');
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/^dry run: +true$/m);
    expect(dry.stdout).toMatch(/^kept: +db-new$/m);
    expect(dry.stdout).toMatch(/^deleted: +db-mid, db-old$|^deleted: +db-old, db-mid$/m);

    const pruned = await ctlOn(lvmDaemon, 'snapshot', 'prune', 'lvm', lvm.vg, 'db', '--keep-last', '1');
    expect(pruned.code).toBe(0);
    expect(pruned.stdout).toMatch(/^state: +succeeded$/m);
    expect(pruned.stdout).toMatch(/^dry run: +false$/m);
    expect((await ctlOn(lvmDaemon, 'snapshot', 'list', 'lvm', lvm.vg, 'db')).stdout).not.toContain('db-old');
  });

  it('creates, resizes and deletes a volume; refuses a bad size; a delete libvirt cannot vouch for needs --force', async () => {
    const created = await ctlOn(lvmDaemon, 'volume', 'create', 'lvm', lvm.vg, 'web', '--size', '16MiB', '--tag', 'team=ci', '--tag', 'tier=web');
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^size: +16 MiB$/m);
    expect(created.stdout).toMatch(/^tags: +team=ci, tier=web$/m);

    const resized = await ctlOn(lvmDaemon, 'volume', 'resize', 'lvm', lvm.vg, 'web', '--size', '24MiB');
    expect(resized.code, resized.stderr).toBe(0);
    expect(resized.stdout).toMatch(/^size: +24 MiB$/m);

    const badSize = await ctlOn(lvmDaemon, 'volume', 'create', 'lvm', lvm.vg, 'web2', '--size', '10G');
    expect(badSize.code).not.toBe(0);
    expect(badSize.stderr).toContain('expected a size such as 512MiB');

    // This daemon has no libvirtd to ask, so whether a VM uses the volume is unknown.
    const unknown = await ctlOn(lvmDaemon, 'volume', 'delete', 'lvm', lvm.vg, 'web');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^debvisorctl: UNAVAILABLE: cannot tell whether a VM on this host uses lvm:.*set force to delete it anyway.*\(trace_id=[0-9a-f]+\)\n$/);
    const deleted = await ctlOn(lvmDaemon, 'volume', 'delete', 'lvm', lvm.vg, 'web', '--force');
    expect(deleted.code, deleted.stderr).toBe(0);
    expect(deleted.stdout).toMatch(new RegExp(`^deleted: +${lvm.vg}/web$`, 'm'));
    expect((await ctlOn(lvmDaemon, 'volume', 'list', '--backend', 'lvm')).stdout).not.toMatch(/ web /);
  });
});
