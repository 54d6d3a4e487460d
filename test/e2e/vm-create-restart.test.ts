// CreateVm and DeleteVm when the daemon is SIGKILLed mid-way, end to end: the REAL daemon against a
// REAL libvirtd (test driver) and a REAL LVM VG on a loop device, restarted on the same store.
//  - A create is held after its volumes exist: its seed is built by genisoimage_path, here a gate
//    script that says it started and waits on a FIFO before it runs the real genisoimage.
//  - A delete is held in lvremove after the undefine: a shared flock on the VG's LVM lock (as in
//    vm-create.test.ts) lets lvs read while lvremove waits.
// The daemon is killed with the processes it started (systemd's KillMode=control-group does the
// same), then started again on the same store: the create is rolled back (nothing left, every
// quota unit back), the delete carried through.
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationService, OperationState, type Operation } from '../../src/gen/debvisor/v1/operation_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { CREATE_ROLLED_BACK } from '../../src/vms/provisioning.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { lvmEnv, startLvm, type TestLvm } from '../support/lvm.js';
import { grpcHealth } from '../support/health.js';
import { finished, MIB, NO_RATE_LIMITS, T, used, type Client } from '../support/storage.js';

const run = promisify(execFile);
const LVM = StorageBackend.LVM;
const suffix = Math.random().toString(36).slice(2, 8);
const WAIT = { timeout: 60_000, interval: 100 };

let lvm: TestLvm;
let libvirt: TestLibvirt;
let work: string;
let seedDir: string;
let gateDir: string;
let pkiDir: string;
let daemon: RunningDaemon | undefined;
const daemons: RunningDaemon[] = [];
let vms: Client<typeof VmService>;
let access: Client<typeof AccessService>;
let ops: Client<typeof OperationService>;

const virsh = async (...args: string[]) => (await run(VIRSH, ['-q', '-c', libvirt.uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } })).stdout;
const domains = async () => (await virsh('list', '--all', '--name')).split('\n').map((l) => l.trim()).filter(Boolean).sort();
async function lvNames(): Promise<string[]> {
  const { stdout } = await run('/sbin/lvm', ['lvs', '--reportformat', 'json', '-o', 'lv_name', lvm.vg], { env: lvmEnv(lvm) });
  return ((JSON.parse(stdout) as { report: { lv: { lv_name: string }[] }[] }).report[0]?.lv ?? []).map((lv) => lv.lv_name).sort();
}
async function usage(): Promise<bigint[]> {
  return Promise.all([QuotaResource.VMS, QuotaResource.VCPUS, QuotaResource.MEMORY_GB, QuotaResource.STORAGE_GB].map((r) => used(access, r)));
}
const exists = (path: string) => stat(path).then(() => true, () => false);

/** Starts the daemon (again) on the same store, PKI and node name; connects the clients. */
async function start(): Promise<void> {
  for (const c of [vms, access, ops] as ({ close(): void } | undefined)[]) c?.close();
  daemon = await startDaemon({
    pkiDir,
    env: {
      DEBVISOR_RPCD_NODE_NAME: 'node-restart',
      DEBVISOR_RPCD_LVM_VGS: lvm.vg,
      DEBVISOR_RPCD_LVM_SYSTEM_DIR: lvm.systemDir,
      DEBVISOR_RPCD_LIBVIRT_URI: libvirt.uri,
      DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_DOMAIN_TYPE: 'test',
      DEBVISOR_RPCD_VMS_CLOUD_INIT_DIR: seedDir,
    },
    config: { ...NO_RATE_LIMITS, store: { backend: 'embedded', embedded: { dir: join(work, 'state') } }, vms: { genisoimage_path: join(gateDir, 'genisoimage') } },
  });
  daemons.push(daemon);
  const running = daemon;
  await vi.waitFor(async () => expect(await grpcHealth(running, VmService.typeName)).toBe('SERVING'), WAIT);
  [vms, access, ops] = await Promise.all([clientFor(VmService, running), clientFor(AccessService, running), clientFor(OperationService, running)]);
}

/** The processes `pid` started, and theirs (from /proc), with their command lines. */
async function descendants(pid: number): Promise<{ pid: number; argv: string[] }[]> {
  const parents = new Map<number, number>();
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const text = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ')'.
    const ppid = Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1]);
    if (Number.isInteger(ppid)) parents.set(Number(entry), ppid);
  }
  const out: { pid: number; argv: string[] }[] = [];
  const walk = async (parent: number) => {
    for (const [child, ppid] of parents) {
      if (ppid !== parent) continue;
      const argv = (await readFile(`/proc/${child}/cmdline`, 'utf8').catch(() => '')).split('\0');
      out.push({ pid: child, argv });
      await walk(child);
    }
  };
  await walk(pid);
  return out;
}

/** SIGKILL the daemon, then what it had started (by PID), as systemd kills a service's control group. */
async function killDaemon(): Promise<void> {
  const victim = daemon!;
  const children = await descendants(victim.pid);
  await victim.stop('SIGKILL');
  for (const { pid } of children) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

beforeAll(async () => {
  [lvm, libvirt] = await Promise.all([startLvm({ vg: `rs-vg${suffix}`, sizeMiB: 256 }), startLibvirt()]);
  work = await mkdtemp(join(tmpdir(), 'debvisor-restart-'));
  seedDir = join(work, 'seeds');
  gateDir = join(work, 'gate');
  pkiDir = join(work, 'pki');
  await run('/bin/mkdir', ['-p', gateDir]);
  await run('/usr/bin/mkfifo', [join(gateDir, 'open')]);
  // genisoimage behind a gate: records its PID (atomically, by rename), then waits until the test writes to the FIFO.
  await writeFile(
    join(gateDir, 'genisoimage'),
    `#!/bin/sh\necho $$ > '${gateDir}/started.tmp' && mv '${gateDir}/started.tmp' '${gateDir}/started'\nread -r _ < '${gateDir}/open'\nexec /usr/bin/genisoimage "$@"\n`,
    { mode: 0o755 },
  );
  await start();
  // A VM that stays: the owner holds units of every dimension, so a refund given twice would show.
  const bystander = await finished(ops, (await vms.createVm({ spec: { name: 'bystander', vcpus: 1, memoryBytes: 256n * MIB, disks: [{ source: { case: 'newVolume', value: { backend: LVM, pool: lvm.vg, sizeBytes: 8n * MIB } } }] } }, T)).operation);
  expect(bystander.state, bystander.error?.message).toBe(OperationState.SUCCEEDED);
});

afterAll(async () => {
  for (const c of [vms, access, ops] as ({ close(): void } | undefined)[]) c?.close();
  for (const d of daemons) await d.cleanup();
  await Promise.all([(lvm as TestLvm | undefined)?.stop(), (libvirt as TestLibvirt | undefined)?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('a daemon killed during CreateVm', () => {
  it('rolls the create back when it starts again: volumes, domain and seed gone, every quota unit back', async () => {
    const before = await usage();
    const spec = {
      name: 'killed-1',
      vcpus: 2,
      memoryBytes: 512n * MIB,
      disks: [
        { source: { case: 'newVolume' as const, value: { backend: LVM, pool: lvm.vg, sizeBytes: 20n * MIB } } },
        { source: { case: 'newVolume' as const, value: { backend: LVM, pool: lvm.vg, sizeBytes: 20n * MIB } } },
      ],
      cloudInit: { userData: new TextEncoder().encode('#cloud-config\n') },
    };
    const { operation } = await vms.createVm({ spec }, T);
    const id = operation?.id ?? '';
    // Held in the seed step: both volumes exist.
    await vi.waitFor(async () => expect(await exists(join(gateDir, 'started'))).toBe(true), WAIT);
    expect(await lvNames()).toEqual(['bystander-disk0', 'killed-1-disk0', 'killed-1-disk1']);
    expect((await ops.getOperation({ operationId: id }, T)).operation?.state).toBe(OperationState.RUNNING);
    expect(await usage()).toEqual([before[0]! + 1n, before[1]! + 2n, before[2]! + 1n, before[3]! + 2n]);

    await killDaemon();
    await start();
    const done = await finished(ops, operation, 60_000);
    expect(done.state).toBe(OperationState.FAILED);
    expect(done.error?.code).toBe(Status.UNAVAILABLE);
    expect(done.error?.message).toBe(CREATE_ROLLED_BACK);
    expect(daemon!.logRecords().some((r) => r.msg === 'resuming operation after restart' && r.operation === id)).toBe(true);
    expect(await lvNames()).toEqual(['bystander-disk0']);
    expect(await domains()).toEqual(['bystander']);
    expect(await exists(join(seedDir, 'killed-1.iso'))).toBe(false);
    expect(await usage()).toEqual(before);
  });
});

describe('a daemon killed during DeleteVm', () => {
  it('carries the delete through when it starts again', async () => {
    const before = await usage();
    const spec = {
      name: 'killed-2',
      vcpus: 1,
      memoryBytes: 256n * MIB,
      disks: [
        { source: { case: 'newVolume' as const, value: { backend: LVM, pool: lvm.vg, sizeBytes: 20n * MIB } } },
        { source: { case: 'newVolume' as const, value: { backend: LVM, pool: lvm.vg, sizeBytes: 20n * MIB } } },
      ],
    };
    const made = await finished(ops, (await vms.createVm({ spec }, T)).operation);
    expect(made.state, made.error?.message).toBe(OperationState.SUCCEEDED);
    const lockFile = join(dirname(lvm.systemDir), 'lock', `V_${lvm.vg}`);
    let deleting: Operation | undefined;
    const holder = spawn('/usr/bin/flock', ['--shared', '--no-fork', lockFile, '/bin/sh', '-c', 'echo held; exec sleep 600'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (code) => reject(new Error(`flock exited ${code}`)));
      });
      deleting = (await vms.deleteVm({ vmName: 'killed-2', deleteVolumes: true }, T)).operation;
      const id = deleting?.id ?? '';
      // Held in lvremove, waiting for the lock (an lvs now would wait behind it): the domain is undefined, vms/vcpus/memory_gb given back.
      await vi.waitFor(async () => expect((await ops.getOperation({ operationId: id }, T)).operation?.stage).toMatch(/^deleting lvm:/), WAIT);
      await vi.waitFor(async () => expect((await descendants(daemon!.pid)).some((p) => p.argv.includes('lvremove'))).toBe(true), WAIT);
      expect(await domains()).toEqual(['bystander']);
      await killDaemon();
    } finally {
      // --no-fork: the holder is the process holding the lock; it is released once it has exited.
      if (holder.exitCode === null && holder.signalCode === null) {
        const exited = new Promise((resolve) => holder.once('exit', resolve));
        holder.kill('SIGKILL');
        await exited;
      }
    }
    // Killed with the daemon, lvremove removed nothing.
    expect(await lvNames()).toEqual(['bystander-disk0', 'killed-2-disk0', 'killed-2-disk1']);
    await start();
    const done = await finished(ops, deleting, 60_000);
    expect(done.state, done.error?.message).toBe(OperationState.SUCCEEDED);
    expect(await lvNames()).toEqual(['bystander-disk0']);
    expect(await domains()).toEqual(['bystander']);
    expect(await usage()).toEqual(before);
  });
});
