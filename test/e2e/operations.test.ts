// Long-running operations end to end, with the test-only operation kind: life cycle
// with a progress stream, cancel (killing its host command), idempotent retries,
// restart recovery, and the test service's double switch.
import { execFileSync } from 'node:child_process';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { clientFor, runMain, type RunningDaemon } from '../support/daemon.js';
import { issueClientFor } from '../support/security.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startTestingDaemon } from '../support/testing.js';

async function rejection(call: Promise<unknown>): Promise<ServiceError> {
  try {
    await call;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error('call succeeded but must have failed');
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('operations (embedded store)', () => {
  let daemon: RunningDaemon;
  beforeAll(async () => {
    daemon = await startTestingDaemon();
  });
  afterAll(async () => {
    if (!daemon.alive()) console.log(daemon.logs());
    await daemon.cleanup();
  });

  it('serves Echo, the chain benchmark’s handler, through the whole chain', async () => {
    const testing = await clientFor(TestingService, daemon);
    expect((await testing.echo({ text: 'ping' }, { timeoutMs: 5000 })).text).toBe('ping');
    testing.close();
  });

  it('runs the life cycle PENDING → RUNNING → SUCCEEDED with a progress stream', async () => {
    const testing = await clientFor(TestingService, daemon);
    const ops = await clientFor(OperationService, daemon);
    // Held after its first step until the watch has seen it, so the stream sees the steps after it.
    const started = await testing.startTestOperation({ duration: durationFromMs(1500), steps: 5, latch: 'progress-stream' }, { timeoutMs: 5000 });
    const id = started.operation!.id;
    expect(started.operation?.state).toBe(OperationState.PENDING);
    const seen: number[] = [];
    const states = new Set<OperationState>();
    let released = false;
    for await (const update of ops.watchOperation({ operationId: id }, { timeoutMs: 120_000 })) {
      seen.push(update.operation!.progressPercent);
      states.add(update.operation!.state);
      if (!released && update.operation!.progressPercent > 0) {
        await testing.openTestLatch({ latch: 'progress-stream' }, { timeoutMs: 5000 });
        released = true;
      }
    }
    expect(released).toBe(true);
    expect(states).toContain(OperationState.SUCCEEDED);
    expect(seen[seen.length - 1]).toBe(100);
    expect(new Set(seen).size).toBeGreaterThanOrEqual(3);
    expect([...seen].sort((a, b) => a - b)).toEqual(seen);
    const done = await ops.getOperation({ operationId: id }, { timeoutMs: 5000 });
    expect(done.operation?.doneTime).toBeDefined();
    const listed = await ops.listOperations({ state: OperationState.SUCCEEDED }, { timeoutMs: 5000 });
    expect(listed.operations.map((o) => o.id)).toContain(id);
    testing.close();
    ops.close();
  });

  it('cancels a running operation and kills its host command', async () => {
    const testing = await clientFor(TestingService, daemon);
    const ops = await clientFor(OperationService, daemon);
    const started = await testing.startTestOperation({ duration: durationFromMs(30_000), steps: 30, runHostCommand: true }, { timeoutMs: 5000 });
    const id = started.operation!.id;
    // Find the host command: a /bin/sleep child of the daemon.
    const sleeper = await vi.waitFor(() => {
      const out = execFileSync('ps', ['-o', 'pid=,args=', '--ppid', String(daemon.pid)], { encoding: 'utf8' });
      const pid = out.split('\n').map((l) => l.trim()).filter((l) => l.includes('/bin/sleep 30')).map((l) => Number(l.split(/\s+/)[0]))[0];
      if (pid === undefined) throw new Error('no /bin/sleep child of the daemon yet');
      return pid;
    }, { timeout: 60_000, interval: 100 });
    const cancelled = await ops.cancelOperation({ operationId: id }, { timeoutMs: 5000 });
    expect(cancelled.operation?.cancelRequested).toBe(true);
    const final = await ops.waitOperation({ operationId: id, timeout: durationFromMs(10_000) }, { timeoutMs: 15_000 });
    expect(final.operation?.state).toBe(OperationState.CANCELLED);
    await vi.waitFor(() => {
      expect(processAlive(sleeper)).toBe(false);
    }, { timeout: 60_000, interval: 100 });
    testing.close();
    ops.close();
  });

  it('returns the same operation for a retry with the same request_id', async () => {
    const testing = await clientFor(TestingService, daemon);
    const first = await testing.startTestOperation({ duration: durationFromMs(200), requestId: 'retry-1' }, { timeoutMs: 5000 });
    const again = await testing.startTestOperation({ duration: durationFromMs(200), requestId: 'retry-1' }, { timeoutMs: 5000 });
    const other = await testing.startTestOperation({ duration: durationFromMs(200), requestId: 'retry-2' }, { timeoutMs: 5000 });
    expect(again.operation?.id).toBe(first.operation?.id);
    expect(other.operation?.id).not.toBe(first.operation?.id);
    const bad = await rejection(testing.startTestOperation({ requestId: 'bad id; rm -rf' }, { timeoutMs: 5000 }));
    expect(bad.code).toBe(Status.INVALID_ARGUMENT);
    expect(bad.details).toContain('request_id');
    testing.close();
  });

  it('answers a retried request_id of any mutating call with the first reply, without secrets and without consuming twice', async () => {
    const testing = await clientFor(TestingService, daemon);
    const access = await clientFor(AccessService, daemon);
    const first = await testing.consumeTestQuota({ requestId: 'consume-1' }, { timeoutMs: 5000 });
    const again = await testing.consumeTestQuota({ requestId: 'consume-1' }, { timeoutMs: 5000 });
    expect(again.used).toBe(first.used);
    const quota = await access.getQuota({}, { timeoutMs: 5000 });
    expect(quota.quotas.find((q) => q.resource === QuotaResource.SNAPSHOTS)?.used).toBe(first.used);
    const created = await access.createApiKey({ permissions: ['vm:list'], requestId: 'key-1' }, { timeoutMs: 5000 });
    const retried = await access.createApiKey({ permissions: ['vm:list'], requestId: 'key-1' }, { timeoutMs: 5000 });
    expect(retried.apiKey?.keyId).toBe(created.apiKey?.keyId);
    expect(created.secret).toMatch(/^dvk_/);
    expect(retried.secret).toBe('');
    const listed = await access.listApiKeys({}, { timeoutMs: 5000 });
    expect(listed.apiKeys.filter((k) => k.keyId === created.apiKey?.keyId)).toHaveLength(1);
    testing.close();
    access.close();
  });

  it('shows callers their own operations only, unless they hold the :any permissions', async () => {
    const testing = await clientFor(TestingService, daemon);
    const mine = await testing.startTestOperation({ duration: durationFromMs(10) }, { timeoutMs: 5000 });
    testing.close();
    const admin = await clientFor(AccessService, daemon);
    const developer = await issueClientFor(daemon.pki, 'spiffe://debvisor/ci/developer');
    const viewer = await issueClientFor(daemon.pki, 'spiffe://debvisor/ops/viewer');
    await admin.bindRole({ principal: 'spiffe://debvisor/ci/developer', roleName: 'developer' }, { timeoutMs: 5000 });
    await admin.bindRole({ principal: 'spiffe://debvisor/ops/viewer', roleName: 'viewer' }, { timeoutMs: 5000 });
    admin.close();
    const asDeveloper = await clientFor(OperationService, daemon, developer);
    const hidden = await rejection(asDeveloper.getOperation({ operationId: mine.operation!.id }, { timeoutMs: 5000 }));
    expect(hidden.code).toBe(Status.NOT_FOUND);
    expect((await asDeveloper.listOperations({}, { timeoutMs: 5000 })).operations).toEqual([]);
    // The developer role may not cancel at all (RBAC answers before the handler).
    const cancel = await rejection(asDeveloper.cancelOperation({ operationId: mine.operation!.id }, { timeoutMs: 5000 }));
    expect(cancel.code).toBe(Status.PERMISSION_DENIED);
    const asViewer = await clientFor(OperationService, daemon, viewer);
    expect((await asViewer.getOperation({ operationId: mine.operation!.id }, { timeoutMs: 5000 })).operation?.owner).toBe('spiffe://debvisor/admin/admin');
    expect((await asViewer.listOperations({}, { timeoutMs: 5000 })).operations.map((o) => o.id)).toContain(mine.operation!.id);
    asDeveloper.close();
    asViewer.close();
  });

  it('records a failure with its code and message', async () => {
    const testing = await clientFor(TestingService, daemon);
    const ops = await clientFor(OperationService, daemon);
    const started = await testing.startTestOperation({ duration: durationFromMs(100), failMessage: 'disk on fire' }, { timeoutMs: 5000 });
    const final = await ops.waitOperation({ operationId: started.operation!.id, timeout: durationFromMs(5000) }, { timeoutMs: 10_000 });
    expect(final.operation?.state).toBe(OperationState.FAILED);
    expect(final.operation?.error).toMatchObject({ code: Status.FAILED_PRECONDITION, message: 'disk on fire' });
    testing.close();
    ops.close();
  });

  it('refuses more concurrent operations than the quota allows', async () => {
    const testing = await clientFor(TestingService, daemon);
    const ops = await clientFor(OperationService, daemon);
    const running = [];
    for (let i = 0; i < 5; i++) running.push(await testing.startTestOperation({ duration: durationFromMs(20_000) }, { timeoutMs: 5000 }));
    const sixth = await rejection(testing.startTestOperation({ duration: durationFromMs(20_000) }, { timeoutMs: 5000 }));
    expect(sixth.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(sixth.details).toContain('concurrent_operations');
    for (const op of running) await ops.cancelOperation({ operationId: op.operation!.id }, { timeoutMs: 5000 });
    for (const op of running) await ops.waitOperation({ operationId: op.operation!.id, timeout: durationFromMs(5000) }, { timeoutMs: 10_000 });
    // Slots are free again.
    const next = await testing.startTestOperation({ duration: durationFromMs(10) }, { timeoutMs: 5000 });
    expect(next.operation?.id).toBeDefined();
    testing.close();
    ops.close();
  });
});

describe('retention', () => {
  let daemon: RunningDaemon;
  beforeAll(async () => {
    // About 1.8 s of retention: finished operations are swept a couple of seconds after they end.
    daemon = await startTestingDaemon({ config: { operations: { retention_hours: 0.0005 } } });
  });
  afterAll(() => daemon.cleanup());

  it('deletes finished operations once the retention period has passed, and keeps running ones', async () => {
    const testing = await clientFor(TestingService, daemon);
    const ops = await clientFor(OperationService, daemon);
    const short = await testing.startTestOperation({ duration: durationFromMs(10), requestId: 'short-lived' }, { timeoutMs: 5000 });
    const long = await testing.startTestOperation({ duration: durationFromMs(20_000) }, { timeoutMs: 5000 });
    await ops.waitOperation({ operationId: short.operation!.id, timeout: durationFromMs(5000) }, { timeoutMs: 10_000 });
    let gone = false;
    for (let i = 0; i < 60 && !gone; i++) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      gone = (await rejection(ops.getOperation({ operationId: short.operation!.id }, { timeoutMs: 5000 })).catch(() => undefined))?.code === Status.NOT_FOUND;
    }
    expect(gone).toBe(true);
    expect((await ops.getOperation({ operationId: long.operation!.id }, { timeoutMs: 5000 })).operation?.state).toBe(OperationState.RUNNING);
    await ops.cancelOperation({ operationId: long.operation!.id }, { timeoutMs: 5000 });
    testing.close();
    ops.close();
  });
});

describe('test service switch', () => {
  it('refuses --enable-test-service without DEBVISOR_ALLOW_TEST_SERVICE=1', async () => {
    const result = await runMain(['--enable-test-service', '--check-config']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('DEBVISOR_ALLOW_TEST_SERVICE=1');
  });
});

describe('restart recovery (etcd)', () => {
  let etcd: EtcdCluster;
  beforeAll(async () => {
    etcd = await startEtcd();
  });
  afterAll(() => etcd.stop());

  it('resumes a resumable operation left RUNNING by a killed daemon when it restarts', async () => {
    const env = { DEBVISOR_RPCD_STORE_BACKEND: 'etcd', DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','), DEBVISOR_RPCD_NODE_NAME: 'node-resume' };
    const first = await startTestingDaemon({ env });
    const testing = await clientFor(TestingService, first);
    const started = await testing.startTestOperation({ duration: durationFromMs(2000), steps: 4, resumable: true }, { timeoutMs: 5000 });
    testing.close();
    await first.stop('SIGKILL');
    const second = await startTestingDaemon({ env, pkiDir: first.pki.dir });
    try {
      const ops = await clientFor(OperationService, second);
      const final = await ops.waitOperation({ operationId: started.operation!.id, timeout: durationFromMs(10_000) }, { timeoutMs: 15_000 });
      expect(final.operation?.state).toBe(OperationState.SUCCEEDED);
      expect(final.operation?.node).toBe('node-resume');
      expect(second.logRecords().some((r) => r.msg === 'resuming operation after restart')).toBe(true);
      ops.close();
    } finally {
      await second.cleanup();
      await first.cleanup();
    }
  });

  it('marks an operation left RUNNING by a killed daemon FAILED when it restarts', async () => {
    const env = { DEBVISOR_RPCD_STORE_BACKEND: 'etcd', DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','), DEBVISOR_RPCD_NODE_NAME: 'node-restart' };
    const first = await startTestingDaemon({ env });
    const testing = await clientFor(TestingService, first);
    const started = await testing.startTestOperation({ duration: durationFromMs(60_000) }, { timeoutMs: 5000 });
    testing.close();
    await first.stop('SIGKILL');
    const second = await startTestingDaemon({ env, pkiDir: first.pki.dir });
    try {
      const ops = await clientFor(OperationService, second);
      const final = await ops.waitOperation({ operationId: started.operation!.id, timeout: durationFromMs(5000) }, { timeoutMs: 10_000 });
      expect(final.operation?.state).toBe(OperationState.FAILED);
      expect(final.operation?.error?.message).toContain('daemon restarted');
      ops.close();
    } finally {
      await second.cleanup();
      await first.cleanup();
    }
  });
});
