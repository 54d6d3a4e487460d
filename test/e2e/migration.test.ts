// MigrationService end to end, FOR REAL: two unprivileged qemu:///session libvirtds running real
// QEMU (TCG) guests (test/support/libvirt.ts startQemuSessions, as docs/libvirt-migration.md),
// one real etcd, and one real daemon per "node" (node-a, node-b) reaching the other node's libvirt
// through migration.target_uri_template. Covered: PrepareMigration's reasons, a live migration
// (virsh migrate --p2p --tunnelled …) with domjobinfo progress in the operation, Cancel
// (domjobabort; the VM keeps running on the source), a failing migration rolled back, and
// FailoverVM (refused while the source's lease lives; performed from the published inventory once
// it has expired). Skipped locally with DEBVISOR_SKIP_QEMU=1 or DEBVISOR_SKIP_SLOW=1, never in CI.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ExecError } from '../../src/backends/exec.js';
import { Libvirt } from '../../src/backends/libvirt/virsh.js';
import { ensureDevPki } from '../../src/pki/index.js';
import { MigrationService } from '../../src/gen/debvisor/v1/migration_pb.js';
import { NodeHealth, NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { OperationKind, OperationService, OperationState, type Operation } from '../../src/gen/debvisor/v1/operation_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startQemuSessions, VIRSH } from '../support/libvirt.js';
import { rejection } from '../support/security.js';

const run = promisify(execFile);
const T = { timeoutMs: 20_000 };
const MIB = 1024n * 1024n;
const DISKLESS = join(import.meta.dirname, '..', 'backends', 'fixtures', 'libvirt', 'qemu-diskless.xml');
const skipLocally = (process.env.DEBVISOR_SKIP_QEMU === '1' || process.env.DEBVISOR_SKIP_SLOW === '1') && process.env.CI !== 'true';

type Sessions = Awaited<ReturnType<typeof startQemuSessions<'node-a' | 'node-b'>>>;
let sessions: Sessions;
let etcd: EtcdCluster;
let daemonA: RunningDaemon;
let daemonB: RunningDaemon;
const closers: { close(): void }[] = [];
let pkiDir: string;

async function virsh(node: 'node-a' | 'node-b', ...args: string[]): Promise<string> {
  const { stdout } = await run(VIRSH, ['-q', '-c', sessions.nodes[node].uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });
  return stdout.trim();
}

async function stateOn(node: 'node-a' | 'node-b', vm: string): Promise<string> {
  return virsh(node, 'domstate', '--domain', vm).catch(() => 'undefined');
}

/** Defines a diskless TCG guest (optionally with extra devices) on a node and optionally starts it. */
async function defineVm(node: 'node-a' | 'node-b', name: string, options: { start?: boolean; devices?: string; memoryMiB?: number } = {}): Promise<void> {
  const xml = (await readFile(DISKLESS, 'utf8'))
    .replace('<name>mig1</name>', `<name>${name}</name>`)
    .replace('<devices>', `<devices>${options.devices ?? ''}`)
    .replace("<memory unit='MiB'>64</memory>", `<memory unit='MiB'>${options.memoryMiB ?? 64}</memory>`);
  const dir = await mkdtemp(join(tmpdir(), 'debvisor-mig-e2e-'));
  try {
    await writeFile(join(dir, 'domain.xml'), xml);
    await virsh(node, 'define', '--file', join(dir, 'domain.xml'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  if (options.start) await virsh(node, 'start', '--domain', name);
}

function daemonEnv(node: 'node-a' | 'node-b'): Record<string, string> {
  return {
    DEBVISOR_RPCD_STORE_BACKEND: 'etcd',
    DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','),
    DEBVISOR_RPCD_NODE_NAME: node,
    DEBVISOR_RPCD_NODES_HEARTBEAT_INTERVAL_SECONDS: '1',
    DEBVISOR_RPCD_NODES_SELF_REGISTER: 'true',
    DEBVISOR_RPCD_LIBVIRT_URI: sessions.nodes[node].uri,
    DEBVISOR_RPCD_MIGRATION_TARGET_URI_TEMPLATE: sessions.uriTemplate,
    DEBVISOR_RPCD_MIGRATION_PROGRESS_POLL_MS: '100',
  };
}

function tracked<C extends { close(): void }>(c: C): C {
  closers.push(c);
  return c;
}

/** Polls the operation until it is terminal; returns every state seen. */
async function follow(daemon: RunningDaemon, id: string, onUpdate?: (op: Operation) => Promise<void> | void): Promise<Operation[]> {
  const ops = tracked(await clientFor(OperationService, daemon));
  const seen: Operation[] = [];
  const deadline = Date.now() + 60_000;
  for (;;) {
    const { operation } = await ops.getOperation({ operationId: id }, T);
    if (!operation) throw new Error(`operation ${id} vanished`);
    seen.push(operation);
    await onUpdate?.(operation);
    if ([OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED].includes(operation.state)) return seen;
    if (Date.now() > deadline) throw new Error(`operation ${id} still ${OperationState[operation.state]} after 60 s`);
    await sleep(100);
  }
}

async function untilOnline(daemon: RunningDaemon, hostname: string, online: boolean, withinMs: number): Promise<void> {
  const nodes = tracked(await clientFor(NodeService, daemon));
  const deadline = Date.now() + withinMs;
  while ((await nodes.getNode({ hostname }, T).then((r) => r.node?.online, () => undefined)) !== online) {
    if (Date.now() > deadline) throw new Error(`${hostname} not ${online ? 'online' : 'offline'} within ${withinMs} ms`);
    await sleep(200);
  }
}

describe.skipIf(skipLocally)('MigrationService with two real QEMU session libvirtds', () => {
  beforeAll(async () => {
    [sessions, etcd, pkiDir] = await Promise.all([startQemuSessions(['node-a', 'node-b'] as const), startEtcd(), mkdtemp(join(tmpdir(), 'debvisor-mig-pki-'))]);
    // One CA for both daemons, made first so they can start side by side.
    await ensureDevPki(pkiDir);
    [daemonA, daemonB] = await Promise.all([startDaemon({ env: daemonEnv('node-a'), pkiDir }), startDaemon({ env: daemonEnv('node-b'), pkiDir })]);
    // fo1 runs on node-a from the start, so node-a's daemon has published it long before the failover test.
    await Promise.all([defineVm('node-a', 'fo1', { start: true }), defineVm('node-a', 'fo-disk', { devices: "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/fo-disk.qcow2'/><target dev='vda' bus='virtio'/></disk>" })]);
    await Promise.all([untilOnline(daemonA, 'node-a', true, 10_000), untilOnline(daemonA, 'node-b', true, 10_000)]);
  });

  afterAll(async () => {
    for (const c of closers) c.close();
    await Promise.all([(daemonA as RunningDaemon | undefined)?.cleanup(), (daemonB as RunningDaemon | undefined)?.cleanup()]);
    await (sessions as Sessions | undefined)?.stop();
    await (etcd as EtcdCluster | undefined)?.stop();
    if (pkiDir) await rm(pkiDir, { recursive: true, force: true });
  });

  it('PrepareMigration says why a migration is not allowed, and refuses bad input by field', async () => {
    const migration = tracked(await clientFor(MigrationService, daemonA));
    const nodes = tracked(await clientFor(NodeService, daemonA));
    await defineVm('node-a', 'idle1');
    await nodes.registerNode({ hostname: 'node-off', ip: '10.0.0.50' }, T);
    await nodes.registerNode({ hostname: 'node-small', ip: '10.0.0.51' }, T);
    await nodes.heartbeat({ hostname: 'node-small', status: NodeHealth.HEALTHY, metrics: { memoryTotalBytes: 1024n * MIB, memoryFreeBytes: 32n * MIB } }, T);

    const ok = await migration.prepareMigration({ vmName: 'fo1', sourceNode: 'node-a', targetNode: 'node-b' }, T);
    expect(ok).toMatchObject({ allowed: true, reasons: [], requiredMemoryBytes: 64n * MIB });
    expect(ok.targetFreeMemoryBytes).toBeGreaterThan(64n * MIB);
    // An empty source_node is this daemon's node.
    expect((await migration.prepareMigration({ vmName: 'fo1', targetNode: 'node-b' }, T)).allowed).toBe(true);

    const reasons = async (vmName: string, targetNode: string) => {
      const answer = await migration.prepareMigration({ vmName, sourceNode: 'node-a', targetNode }, T);
      expect(answer.allowed).toBe(false);
      return answer.reasons.join('\n');
    };
    expect(await reasons('idle1', 'node-b')).toMatch(/VM idle1 is shut off on node-a; only a running VM can be live-migrated/);
    const offline = await reasons('fo1', 'node-off');
    expect(offline).toContain('target node node-off is offline');
    expect(offline).toContain('has not reported its memory');
    expect(offline).toContain('the libvirt of target node node-off is unreachable');
    // node-small's liveness lease lasts 3 heartbeat intervals (3 s here): on a loaded machine the
    // check may come later, so it is repeated, each time right after a fresh heartbeat.
    await vi.waitFor(async () => {
      await nodes.heartbeat({ hostname: 'node-small', status: NodeHealth.HEALTHY, metrics: { memoryTotalBytes: 1024n * MIB, memoryFreeBytes: 32n * MIB } }, T);
      const small = await reasons('fo1', 'node-small');
      expect(small).toContain('not enough memory on target node node-small: 32 MiB free at its last heartbeat, the VM needs 64 MiB');
      expect(small).not.toContain('offline');
    }, { timeout: 120_000, interval: 100 });
    expect(await reasons('fo1', 'never-registered')).toContain('target node never-registered is not registered');

    // MigrateVM enforces the same checks before it starts anything.
    const refused = await rejection(migration.migrateVM({ vmName: 'fo1', sourceNode: 'node-a', targetNode: 'node-small' }, T));
    expect(refused.code).toBe(Status.FAILED_PRECONDITION);
    expect(refused.details).toContain('not enough memory');

    expect((await rejection(migration.prepareMigration({ vmName: 'nope', targetNode: 'node-b' }, T))).code).toBe(Status.NOT_FOUND);
    for (const [request, field] of [
      [{ vmName: '-x', targetNode: 'node-b' }, 'vm_name'],
      [{ vmName: 'fo1', targetNode: '' }, 'target_node'],
      [{ vmName: 'fo1', targetNode: 'bad_host' }, 'target_node'],
      [{ vmName: 'fo1', targetNode: 'node-a' }, 'target_node'],
      [{ vmName: 'fo1', sourceNode: 'x..y', targetNode: 'node-b' }, 'source_node'],
    ] as const) {
      const err = await rejection(migration.prepareMigration(request, T));
      expect(err.code, JSON.stringify(request)).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toContain(field);
    }
    const elsewhere = await rejection(migration.prepareMigration({ vmName: 'fo1', sourceNode: 'node-b', targetNode: 'node-small' }, T));
    expect(elsewhere.code).toBe(Status.FAILED_PRECONDITION);
    expect(elsewhere.details).toContain("source_node node-b is not this daemon's node (node-a)");
    const offline2 = await rejection(migration.migrateVM({ vmName: 'fo1', targetNode: 'node-b', allowDowntime: true }, T));
    expect(offline2.code).toBe(Status.INVALID_ARGUMENT);
    expect(offline2.details).toContain('allow_downtime');
  });

  it('MigrateVM live-migrates a running VM to the target, reporting domjobinfo progress', async () => {
    // 512 MiB: even as zero pages, enough data at 1 MiB/s for the copy to span several progress polls.
    await defineVm('node-a', 'mig1', { start: true, memoryMiB: 512 });
    const migration = tracked(await clientFor(MigrationService, daemonA));
    const started = Date.now();
    const { operation } = await migration.migrateVM({ vmName: 'mig1', sourceNode: 'node-a', targetNode: 'node-b', bandwidthMibS: 1, compressed: true }, T);
    expect(operation).toMatchObject({ kind: OperationKind.MIGRATE_VM, target: 'vm:mig1', node: 'node-a' });
    const seen = await follow(daemonA, operation!.id);
    const last = seen[seen.length - 1]!;
    console.log(`migration took ${Date.now() - started} ms; stages: ${[...new Set(seen.map((o) => `${o.progressPercent}% ${o.stage}`))].join(' | ')}`);
    expect(last.state, last.error?.message).toBe(OperationState.SUCCEEDED);
    // Stages other than "starting" come from domjobinfo polls of the running job.
    expect(seen.some((o) => o.state === OperationState.RUNNING && o.stage.startsWith('migrating:') && o.stage !== 'migrating: starting')).toBe(true);
    expect(seen.some((o) => o.progressPercent > 0 && o.progressPercent < 100 && / MiB remaining/.test(o.stage))).toBe(true);
    expect(last.result.case).toBe('migration');
    const result = last.result.case === 'migration' ? last.result.value : undefined;
    expect(result).toMatchObject({ vmName: 'mig1', sourceNode: 'node-a', targetNode: 'node-b' });
    expect(result?.transferredBytes).toBeGreaterThan(0n);
    expect(result?.downtime).toBeDefined();

    expect(await stateOn('node-b', 'mig1')).toBe('running');
    expect(await virsh('node-b', 'dominfo', '--domain', 'mig1')).toMatch(/Persistent:\s+yes/);
    expect(await stateOn('node-a', 'mig1')).toBe('undefined');
    // mig1 stays running on node-b: the next two tests move it back from there, through node-b's daemon.
  });

  it('CancelOperation aborts the job (domjobabort) and the VM keeps running on the source', async () => {
    // Back from node-b to node-a, through node-b's daemon (the source's daemon runs a migration).
    const migration = tracked(await clientFor(MigrationService, daemonB));
    const ops = tracked(await clientFor(OperationService, daemonB));
    const { operation } = await migration.migrateVM({ vmName: 'mig1', targetNode: 'node-a', bandwidthMibS: 1 }, T);
    expect(operation?.node).toBe('node-b');
    let cancelledAt = 0;
    const seen = await follow(daemonB, operation!.id, async (op) => {
      // Cancel as soon as the operation runs: virsh migrate may not have created the job yet, so
      // this also covers the abort being retried until libvirt accepts it.
      if (!cancelledAt && op.state === OperationState.RUNNING) {
        cancelledAt = Date.now();
        await ops.cancelOperation({ operationId: op.id }, T);
      }
    });
    const last = seen[seen.length - 1]!;
    expect(cancelledAt).toBeGreaterThan(0);
    console.log(`cancelled migration ended ${Date.now() - cancelledAt} ms after CancelOperation`);
    expect(last.state, last.error?.message).toBe(OperationState.CANCELLED);
    expect(last.cancelRequested).toBe(true);
    expect(await stateOn('node-b', 'mig1')).toBe('running');
    expect(await virsh('node-b', 'dominfo', '--domain', 'mig1')).toMatch(/Persistent:\s+yes/);
    expect(await stateOn('node-a', 'mig1')).toBe('undefined');
    expect(await virsh('node-b', 'domjobinfo', '--domain', 'mig1')).toMatch(/Job type:\s+None/);
  });

  it('a migration the target refuses fails, and the VM is left running on the source', async () => {
    // The same name with another UUID on the target: libvirt refuses the incoming domain.
    await defineVm('node-a', 'mig1');
    const migration = tracked(await clientFor(MigrationService, daemonB));
    const { operation } = await migration.migrateVM({ vmName: 'mig1', targetNode: 'node-a' }, T);
    const last = (await follow(daemonB, operation!.id)).pop()!;
    console.log(`failed migration: ${last.error?.message}`);
    expect(last.state).toBe(OperationState.FAILED);
    expect(last.error?.message).toContain('migration of VM "mig1" from node-b to node-a failed');
    expect(last.error?.message).toContain('the VM is still running on node-b');
    expect(await stateOn('node-b', 'mig1')).toBe('running');
    expect(await stateOn('node-a', 'mig1')).toBe('shut off');
    await virsh('node-b', 'destroy', '--domain', 'mig1');
  });

  it('virsh migrate to an unreachable target fails as UNAVAILABLE, naming the target', async () => {
    // The operation never gets here (PrepareMigration's reachability check refuses first), so the
    // backend call is checked directly: the real virsh and the real source libvirtd.
    const source = new Libvirt({ uri: sessions.nodes['node-a'].uri, registry: new Registry() });
    const err = await source.migrate('fo1', `qemu+unix:///session?socket=${sessions.root}/nowhere/libvirt-sock`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecError);
    expect(err).toMatchObject({ kind: 'unavailable', publicMessage: "the target node's libvirt is unreachable from the source" });
    expect(await stateOn('node-a', 'fo1')).toBe('running');
  });

  it('FailoverVM is refused while the source holds its lease, and starts the VM on the target once it has expired', async () => {
    const migrationB = tracked(await clientFor(MigrationService, daemonB));
    const alive = await rejection(migrationB.failoverVM({ vmName: 'fo1', failedNode: 'node-a' }, T));
    expect(alive.code).toBe(Status.FAILED_PRECONDITION);
    expect(alive.details).toContain('split brain');
    for (const [request, code, text] of [
      [{ vmName: 'fo1', failedNode: '' }, Status.INVALID_ARGUMENT, 'failed_node'],
      [{ vmName: 'fo1', failedNode: 'node-a', targetNode: 'node-a' }, Status.INVALID_ARGUMENT, 'target_node'],
      [{ vmName: 'fo1', failedNode: 'never-registered' }, Status.NOT_FOUND, 'never-registered'],
    ] as const) {
      const err = await rejection(migrationB.failoverVM(request, T));
      expect(err.code, JSON.stringify(request)).toBe(code);
      expect(err.details).toContain(text);
    }

    // node-a's host dies: its daemon is killed (no clean lease release) and its guest is gone.
    await daemonA.stop('SIGKILL');
    await virsh('node-a', 'destroy', '--domain', 'fo1');
    const died = Date.now();
    await untilOnline(daemonB, 'node-a', false, 8000);
    console.log(`node-a offline ${Date.now() - died} ms after its daemon was killed`);

    const local = await rejection(migrationB.failoverVM({ vmName: 'fo-disk', failedNode: 'node-a' }, T));
    expect(local.code).toBe(Status.FAILED_PRECONDITION);
    expect(local.details).toContain('not shared storage');
    expect(local.details).toContain('vda (file /var/lib/libvirt/images/fo-disk.qcow2)');
    expect((await rejection(migrationB.failoverVM({ vmName: 'nope', failedNode: 'node-a' }, T))).code).toBe(Status.NOT_FOUND);

    // No target named: the online node with the most free memory (node-b; node-small's lease is long gone).
    const { operation } = await migrationB.failoverVM({ vmName: 'fo1', failedNode: 'node-a' }, T);
    expect(operation).toMatchObject({ kind: OperationKind.FAILOVER_VM, target: 'vm:fo1' });
    const last = (await follow(daemonB, operation!.id)).pop()!;
    expect(last.state, last.error?.message).toBe(OperationState.SUCCEEDED);
    expect(last.result.case === 'migration' ? last.result.value : undefined).toMatchObject({ vmName: 'fo1', sourceNode: 'node-a', targetNode: 'node-b' });
    expect(await stateOn('node-b', 'fo1')).toBe('running');
    // The record was claimed: a second failover cannot start another copy.
    expect((await rejection(migrationB.failoverVM({ vmName: 'fo1', failedNode: 'node-a' }, T))).code).toBe(Status.NOT_FOUND);
  });
});
