// Backup and restore of the daemon's own state, as an operator does it: `debvisorctl store
// backup` while the daemon serves under a write load, `debvisor-rpcd restore` into a fresh
// directory, a daemon started on it. Everything written before the backup is there,
// identical; an API key created before it still works; the load's writes are a prefix.
import { toJson } from '@bufbuild/protobuf';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import {
  AccessService,
  ListApiKeysResponseSchema,
  ListRoleBindingsResponseSchema,
  ListRolesResponseSchema,
  GetQuotaResponseSchema,
} from '../../src/gen/debvisor/v1/access_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { ListOperationsResponseSchema, OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { ctlOn } from '../support/ctl.js';
import { clientFor, runMain, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { startTestingDaemon } from '../support/testing.js';

const T = { timeoutMs: 30_000 };
const CI = 'spiffe://debvisor/ci/builder';
const UNLIMITED = { rate_limit: { per_role_per_minute: { admin: 1_000_000 }, default_per_minute: 1_000_000 } };
/** Far from any default limit, so a load write is told apart from no write. */
const LOAD_LIMIT = 1_000_000;
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

/** Everything the issue names, as comparable JSON: keys, roles, bindings, quotas, operations. */
async function stateOf(daemon: RunningDaemon): Promise<Record<string, unknown>> {
  const access = await clientFor(AccessService, daemon);
  const operations = await clientFor(OperationService, daemon);
  try {
    const keys = await access.listApiKeys({ principal: CI, includeInactive: true, pageSize: 1000 }, T);
    const roles = await access.listRoles({ pageSize: 1000 }, T);
    const bindings = await access.listRoleBindings({ pageSize: 1000 }, T);
    const quota = await access.getQuota({ principal: CI }, T);
    const ops = await operations.listOperations({ pageSize: 1000 }, T);
    return {
      keys: toJson(ListApiKeysResponseSchema, keys),
      roles: toJson(ListRolesResponseSchema, roles),
      bindings: toJson(ListRoleBindingsResponseSchema, bindings),
      quota: toJson(GetQuotaResponseSchema, quota),
      operations: toJson(ListOperationsResponseSchema, ops),
    };
  } finally {
    access.close();
    operations.close();
  }
}

describe('store backup and restore (embedded)', () => {
  let live: RunningDaemon;
  let restored: RunningDaemon | undefined;
  let token = '';

  beforeAll(async () => {
    live = await startTestingDaemon({ config: UNLIMITED });
    const access = await clientFor(AccessService, live);
    const testing = await clientFor(TestingService, live);
    const operations = await clientFor(OperationService, live);
    try {
      await access.putRole({ role: { name: 'ci', description: 'CI runners', permissions: ['testing:echo', 'access:apikey:list'] } }, T);
      await access.bindRole({ principal: CI, roleName: 'ci' }, T);
      await access.setQuota({ principal: CI, resource: QuotaResource.SNAPSHOTS, limit: 7n }, T);
      token = (await access.createApiKey({ owner: CI, permissions: ['testing:echo'], description: 'before the backup' }, T)).secret;
      const started = await testing.startTestOperation({ duration: durationFromMs(10), steps: 1 }, T);
      const id = started.operation?.id ?? '';
      await operations.waitOperation({ operationId: id, timeout: durationFromMs(20_000) }, T);
    } finally {
      access.close();
      testing.close();
      operations.close();
    }
  });

  afterAll(async () => {
    await restored?.cleanup();
    await live.cleanup();
  });

  it('restores, into a fresh directory, exactly what was there before a backup taken under writes', async () => {
    const before = await stateOf(live);
    const file = join(live.dir, 'store.backup');

    // A write load beside the backup: quota changes of other principals, one after another.
    const access = await clientFor(AccessService, live);
    const load = { writing: true, writes: 0 };
    const writer = (async () => {
      while (load.writing) {
        await access.setQuota({ principal: `spiffe://debvisor/load/p${load.writes}`, resource: QuotaResource.STORAGE_GB, limit: BigInt(LOAD_LIMIT + load.writes) }, T);
        load.writes++;
      }
    })();
    const backup = await ctlOn(live, '-o', 'json', 'store', 'backup', '--out', file);
    load.writing = false;
    await writer;
    const { writes } = load;
    access.close();
    expect(backup.code, backup.stderr).toBe(0);
    expect(writes).toBeGreaterThan(0);
    const header = JSON.parse(backup.stdout) as { backend: string; bytes: number; sha256: string };
    expect(header.backend).toBe('embedded');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file).subarray(0, 40).toString()).toContain('debvisor-store-backup');

    const verified = await runMain(['restore', '--from', file, '--verify-only']);
    expect(verified.code, verified.stderr).toBe(0);

    const dataDir = join(live.dir, 'restored-state');
    const restore = await runMain(['restore', '--from', file, '--data-dir', dataDir]);
    expect(restore.code, restore.stderr).toBe(0);
    // Refused the second time: the directory is no longer empty.
    const again = await runMain(['restore', '--from', file, '--data-dir', dataDir]);
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/not empty.*--force/);

    restored = await startDaemon({ pkiDir: live.pki.dir, args: ['--enable-test-service'], env: { DEBVISOR_ALLOW_TEST_SERVICE: '1' }, config: { ...UNLIMITED, store: { embedded: { dir: dataDir } } } });
    expect(await stateOf(restored)).toEqual(before);

    // The load's writes up to some point are there, and none after it.
    const onRestored = await clientFor(AccessService, restored);
    try {
      const gbLimit = async (principal: string) => (await onRestored.getQuota({ principal }, T)).quotas.find((q) => q.resource === QuotaResource.STORAGE_GB)?.limit;
      const unset = await gbLimit('spiffe://debvisor/load/never');
      const limits = [];
      for (let i = 0; i < writes; i++) limits.push(await gbLimit(`spiffe://debvisor/load/p${i}`));
      const present = limits.findIndex((limit) => limit === unset);
      const cut = present < 0 ? writes : present;
      expect(limits.slice(0, cut)).toEqual(limits.slice(0, cut).map((_, i) => BigInt(LOAD_LIMIT + i)));
      expect(limits.slice(cut).every((limit) => limit === unset), `writes after p${cut} restored`).toBe(true);
    } finally {
      onRestored.close();
    }

    // A key made before the backup authenticates on the restored daemon.
    const testing = await clientFor(TestingService, restored, null);
    try {
      const echo = await testing.echo({ text: 'hello' }, { ...T, metadata: bearer(token) });
      expect(echo.text).toBe('hello');
    } finally {
      testing.close();
    }
    const ops = await stateOf(restored);
    expect(JSON.stringify(ops.operations)).toContain(OperationState[OperationState.SUCCEEDED]);
  });

  it('refuses a caller without store:backup', async () => {
    // An API key of a principal whose role lacks store:backup (the CLI's --api-key would lose to the test's certificate environment).
    const access = await clientFor(AccessService, live, null);
    try {
      const stream = access.backupStore({}, { ...T, metadata: bearer(token) });
      const err = await (async () => {
        for await (const part of stream) throw new Error(`a ${part.part.case ?? 'part'} arrived`);
      })().catch((e: unknown) => e);
      expect((err as ServiceError).code).toBe(Status.PERMISSION_DENIED);
    } finally {
      access.close();
    }
  });
});

describe('store backup (etcd)', () => {
  let etcd: EtcdCluster;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    etcd = await startEtcd();
    daemon = await startDaemon({ env: { DEBVISOR_RPCD_STORE_BACKEND: 'etcd', DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(',') } });
  });
  afterAll(async () => {
    await daemon.cleanup();
    await etcd.stop();
  });

  it('saves an etcd snapshot that etcdctl reads, holding what the daemon wrote', async () => {
    const access = await clientFor(AccessService, daemon);
    try {
      await access.putRole({ role: { name: 'etcd-backup-probe', description: 'written before the backup', permissions: ['vm:list'] } }, T);
    } finally {
      access.close();
    }
    const file = join(daemon.dir, 'etcd.backup');
    const backup = await ctlOn(daemon, '-o', 'json', 'store', 'backup', '--out', file);
    expect(backup.code, backup.stderr).toBe(0);
    expect((JSON.parse(backup.stdout) as { backend: string }).backend).toBe('etcd');

    const snapshot = join(daemon.dir, 'snapshot.db');
    const extracted = await runMain(['restore', '--from', file, '--etcd-snapshot-out', snapshot]);
    expect(extracted.code, extracted.stderr).toBe(0);
    const env = { ...process.env, ETCDCTL_API: '3' };
    const status = JSON.parse(execFileSync('etcdctl', ['snapshot', 'status', snapshot, '-w', 'json'], { env, encoding: 'utf8' })) as { totalKey: number };
    expect(status.totalKey).toBeGreaterThan(0);
    // The role is in it: restore it into a directory and read the raw bytes of its keys.
    execFileSync('etcdctl', ['snapshot', 'restore', snapshot, '--data-dir', join(daemon.dir, 'etcd-restored')], { env, stdio: 'ignore' });
    expect(execFileSync('grep', ['-rlc', 'etcd-backup-probe', join(daemon.dir, 'etcd-restored')], { encoding: 'utf8' }).trim()).not.toBe('');
  });
});

