// NodeService against a real etcd: registration, heartbeats, liveness from the lease
// (offline after it expires, online again after the next heartbeat), the monitor role,
// and a daemon that registers and heartbeats its own host.
import { status as Status } from '@grpc/grpc-js';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { CephStatus, NodeHealth, NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { issueClientFor, rejection } from '../support/security.js';

const MONITOR = 'spiffe://debvisor/agent/node-agent';
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('NodeService on etcd', () => {
  let etcd: EtcdCluster;
  let daemon: RunningDaemon;
  let self: RunningDaemon;
  const closers: { close(): void }[] = [];

  beforeAll(async () => {
    etcd = await startEtcd();
    const env = (node: string, extra: Record<string, string> = {}) => ({
      DEBVISOR_RPCD_STORE_BACKEND: 'etcd',
      DEBVISOR_RPCD_STORE_ETCD_ENDPOINTS: etcd.endpoints.join(','),
      DEBVISOR_RPCD_NODE_NAME: node,
      DEBVISOR_RPCD_NODES_HEARTBEAT_INTERVAL_SECONDS: '1',
      ...extra,
    });
    daemon = await startDaemon({ env: env('daemon-a') });
    self = await startDaemon({ env: env('self-host', { DEBVISOR_RPCD_NODES_SELF_REGISTER: 'true' }), pkiDir: daemon.pki.dir });
  });

  afterAll(async () => {
    for (const client of closers) client.close();
    await daemon.cleanup();
    await self.cleanup();
    await etcd.stop();
  });

  async function nodes(target = daemon) {
    const client = await clientFor(NodeService, target);
    closers.push(client);
    return client;
  }

  it('refuses invalid hostnames and addresses, naming the field', async () => {
    const client = await nodes();
    for (const hostname of ['-bad', 'a_b', 'a'.repeat(300), '', '10.0.0.1']) {
      const err = await rejection(client.registerNode({ hostname, ip: '10.0.0.1' }, { timeoutMs: 5000 }));
      expect(err.code, hostname).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toContain('hostname');
    }
    for (const ip of ['', '10.0.0.256', 'not-an-ip', 'fe80::1%eth0']) {
      const err = await rejection(client.registerNode({ hostname: 'node-1', ip }, { timeoutMs: 5000 }));
      expect(err.code, ip).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toContain('ip');
    }
    const err = await rejection(client.getNode({ hostname: 'node-1' }, { timeoutMs: 5000 }));
    expect(err.code).toBe(Status.NOT_FOUND);
  });

  it('registers, keeps the id on re-registration, and goes online with the first heartbeat', async () => {
    const client = await nodes();
    const first = await client.registerNode({ hostname: 'hv-1', ip: '10.0.0.11', zone: 'z1', rack: 'r1', version: '1.0.0', labels: { gpu: 'no' } }, { timeoutMs: 5000 });
    expect(first.node?.id).toMatch(/^[0-9a-f-]{36}$/);
    expect(first.node?.online).toBe(false);
    expect(Number(first.heartbeatInterval?.seconds)).toBe(1);
    const again = await client.registerNode({ hostname: 'hv-1', ip: '10.0.0.12', zone: 'z1', rack: 'r2', version: '1.0.1' }, { timeoutMs: 5000 });
    expect(again.node?.id).toBe(first.node?.id);
    expect(again.node).toMatchObject({ ip: '10.0.0.12', rack: 'r2', version: '1.0.1', labels: {} });

    const before = Date.now();
    const beat = await client.heartbeat(
      {
        hostname: 'hv-1',
        nodeId: first.node!.id,
        status: NodeHealth.DEGRADED,
        metrics: { cpuLoad: 0.5, memUsedPct: 40, diskUsedPct: 70.5, netRttMs: 1.25, cephStatus: CephStatus.HEALTH_WARN, memoryTotalBytes: 8n << 30n, memoryFreeBytes: 4n << 30n },
      },
      { timeoutMs: 5000 },
    );
    const expires = timestampDate(beat.leaseExpireTime!).getTime();
    expect(expires).toBeGreaterThanOrEqual(before + 2500);
    expect(expires).toBeLessThanOrEqual(Date.now() + 3500);
    const { node } = await client.getNode({ hostname: 'hv-1' }, { timeoutMs: 5000 });
    expect(node).toMatchObject({ online: true, health: NodeHealth.DEGRADED, zone: 'z1' });
    expect(node?.metrics).toMatchObject({ cpuLoad: 0.5, memUsedPct: 40, diskUsedPct: 70.5, netRttMs: 1.25, cephStatus: CephStatus.HEALTH_WARN, memoryTotalBytes: 8n << 30n, memoryFreeBytes: 4n << 30n });
    expect(node?.lastHeartbeatTime).toBeDefined();
  });

  it('validates heartbeats: unknown host, wrong node id, out-of-range metrics', async () => {
    const client = await nodes();
    expect((await rejection(client.heartbeat({ hostname: 'never-registered' }, { timeoutMs: 5000 }))).code).toBe(Status.NOT_FOUND);
    const wrongId = await rejection(client.heartbeat({ hostname: 'hv-1', nodeId: '00000000-0000-0000-0000-000000000000' }, { timeoutMs: 5000 }));
    expect(wrongId.code).toBe(Status.INVALID_ARGUMENT);
    expect(wrongId.details).toContain('node_id');
    for (const [metrics, field] of [
      [{ memUsedPct: 101 }, 'mem_used_pct'],
      [{ diskUsedPct: -1 }, 'disk_used_pct'],
      [{ cpuLoad: -0.1 }, 'cpu_load'],
      [{ netRttMs: Number.NaN }, 'net_rtt_ms'],
    ] as const) {
      const err = await rejection(client.heartbeat({ hostname: 'hv-1', metrics }, { timeoutMs: 5000 }));
      expect(err.code, field).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toContain(field);
    }
  });

  it('shows a node offline once its lease expires, and online again after a heartbeat', async () => {
    const client = await nodes();
    await client.registerNode({ hostname: 'hv-2', ip: '10.0.0.21' }, { timeoutMs: 5000 });
    await client.heartbeat({ hostname: 'hv-2', status: NodeHealth.HEALTHY }, { timeoutMs: 5000 });
    expect((await client.getNode({ hostname: 'hv-2' }, { timeoutMs: 5000 })).node?.online).toBe(true);
    const stoppedAt = Date.now();
    let offlineAfter: number | undefined;
    while (Date.now() - stoppedAt < 7000) {
      if (!(await client.getNode({ hostname: 'hv-2' }, { timeoutMs: 5000 })).node?.online) {
        offlineAfter = Date.now() - stoppedAt;
        break;
      }
      await sleep(200);
    }
    console.log(`node offline ${offlineAfter} ms after its last heartbeat (lease TTL 3 s)`);
    expect(offlineAfter).toBeGreaterThanOrEqual(2000);
    expect(offlineAfter).toBeLessThan(6500);
    const listed = await client.listNodes({}, { timeoutMs: 5000 });
    expect(listed.nodes.find((n) => n.hostname === 'hv-2')?.online).toBe(false);
    expect((await client.listNodes({ onlineOnly: true }, { timeoutMs: 5000 })).nodes.map((n) => n.hostname)).not.toContain('hv-2');
    // The record stays: the last health is still reported while offline.
    expect((await client.getNode({ hostname: 'hv-2' }, { timeoutMs: 5000 })).node?.health).toBe(NodeHealth.HEALTHY);

    await client.heartbeat({ hostname: 'hv-2', status: NodeHealth.HEALTHY }, { timeoutMs: 5000 });
    expect((await client.getNode({ hostname: 'hv-2' }, { timeoutMs: 5000 })).node?.online).toBe(true);
    expect((await client.listNodes({ onlineOnly: true }, { timeoutMs: 5000 })).nodes.map((n) => n.hostname)).toContain('hv-2');
  });

  it('keeps a node online while it heartbeats within the interval', async () => {
    const client = await nodes();
    await client.registerNode({ hostname: 'hv-3', ip: '2001:db8::3' }, { timeoutMs: 5000 });
    for (let i = 0; i < 5; i++) {
      await client.heartbeat({ hostname: 'hv-3' }, { timeoutMs: 5000 });
      expect((await client.getNode({ hostname: 'hv-3' }, { timeoutMs: 5000 })).node?.online).toBe(true);
      await sleep(1000);
    }
  });

  it('pages ListNodes by hostname and filters by zone', async () => {
    const client = await nodes();
    for (const name of ['page-a', 'page-b', 'page-c']) await client.registerNode({ hostname: name, ip: '10.0.1.1', zone: 'paging' }, { timeoutMs: 5000 });
    const seen: string[] = [];
    let pageToken = '';
    do {
      const page = await client.listNodes({ zone: 'paging', pageSize: 2, pageToken }, { timeoutMs: 5000 });
      expect(page.nodes.length).toBeLessThanOrEqual(2);
      seen.push(...page.nodes.map((n) => n.hostname));
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(seen).toEqual(['page-a', 'page-b', 'page-c']);
    expect((await rejection(client.listNodes({ pageSize: -1 }, { timeoutMs: 5000 }))).code).toBe(Status.INVALID_ARGUMENT);
  });

  it('lets a monitor heartbeat and list nodes, but not register them', async () => {
    const admin = await clientFor(AccessService, daemon);
    closers.push(admin);
    await admin.bindRole({ principal: MONITOR, roleName: 'monitor' }, { timeoutMs: 5000 });
    const monitor = await clientFor(NodeService, daemon, await issueClientFor(daemon.pki, MONITOR));
    closers.push(monitor);
    await monitor.heartbeat({ hostname: 'hv-1', status: NodeHealth.HEALTHY }, { timeoutMs: 5000 });
    expect((await monitor.listNodes({}, { timeoutMs: 5000 })).nodes.map((n) => n.hostname)).toContain('hv-1');
    expect((await monitor.getNode({ hostname: 'hv-1' }, { timeoutMs: 5000 })).node?.online).toBe(true);
    expect((await rejection(monitor.registerNode({ hostname: 'rogue', ip: '10.0.0.99' }, { timeoutMs: 5000 }))).code).toBe(Status.PERMISSION_DENIED);
  });

  it('shows a self-registering daemon online in ListNodes of every daemon on the store', async () => {
    for (const target of [self, daemon]) {
      const client = await nodes(target);
      const deadline = Date.now() + 5000;
      let node;
      while (Date.now() < deadline) {
        node = (await client.listNodes({}, { timeoutMs: 5000 })).nodes.find((n) => n.hostname === 'self-host');
        if (node?.online) break;
        await sleep(200);
      }
      expect(node).toMatchObject({ online: true, health: NodeHealth.HEALTHY });
      expect(node?.metrics?.memoryTotalBytes).toBeGreaterThan(0n);
    }
    // daemon-a does not self-register.
    expect((await (await nodes()).listNodes({}, { timeoutMs: 5000 })).nodes.map((n) => n.hostname)).not.toContain('daemon-a');
  });
});
