// The daemon on each store backend: readiness follows the store, and the embedded
// data directory admits one daemon at a time.
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { clientFor, runMain, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { grpcHealth, readyz } from '../support/health.js';

async function within(ms: number, check: () => Promise<boolean>): Promise<number> {
  const started = Date.now();
  while (Date.now() - started < ms) {
    if (await check().catch(() => false)) return Date.now() - started;
    await sleep(100);
  }
  throw new Error(`condition not met within ${ms} ms`);
}

describe('daemon on etcd, selected by environment only', () => {
  let etcd: EtcdCluster;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    etcd = await startEtcd();
    daemon = await startDaemon({
      env: { DEBVISOR_RPCD_STORE_BACKEND: 'etcd', DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','), DEBVISOR_RPCD_STORE_ETCD_REQUEST_TIMEOUT_MS: '1500' },
    });
  });

  afterAll(async () => {
    await daemon.cleanup();
    await etcd.stop();
  });

  it('is SERVING with etcd up', async () => {
    expect(await grpcHealth(daemon)).toBe('SERVING');
    expect(daemon.logRecords().some((r) => r.msg === 'store reachable' && r.backend === 'etcd')).toBe(true);
  });

  it('reports NOT_SERVING within 5 s of etcd going away, stays up, and SERVING within 10 s of its return', async () => {
    await etcd.stopMember(0);
    const down = await within(5000, async () => (await readyz(daemon)) === 503 && (await grpcHealth(daemon)) === 'NOT_SERVING');
    expect(down).toBeLessThan(5000);
    await sleep(1000);
    expect(daemon.alive()).toBe(true);

    await etcd.startMember(0);
    const up = await within(10_000, async () => (await readyz(daemon)) === 200 && (await grpcHealth(daemon)) === 'SERVING');
    expect(up).toBeLessThan(10_000);
    const access = await clientFor(AccessService, daemon);
    expect((await access.whoAmI({}, { timeoutMs: 5000 })).principalId).toBe('spiffe://debvisor/admin/admin');
    access.close();
  });
});

describe('embedded data directory', () => {
  let daemon: RunningDaemon;
  beforeAll(async () => {
    daemon = await startDaemon();
  });
  afterAll(() => daemon.cleanup());

  it('refuses a second daemon on the same directory with a clear message', async () => {
    const second = await runMain(['--config', daemon.configFile], {
      DEBVISOR_RPCD_SERVER_LISTEN: '127.0.0.1:0',
      DEBVISOR_RPCD_HTTP_LISTEN: '127.0.0.1:0',
    });
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/data directory .* is in use by another debvisor-rpcd \(pid \d+\)/);
    expect(daemon.alive()).toBe(true);
  });
});
