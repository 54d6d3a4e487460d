// NodeRegistry.heartbeat on a real embedded store: one read of the node record per heartbeat,
// and a record changed between that read and the write is read again, not overwritten.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeRegistry, type NodeHealthRecord } from '../../src/nodes/registry.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const inventory = { hostname: 'node-a', ip: '10.0.0.1', rack: 'r1', zone: 'z1', version: '1.0.0', labels: {} };
const health: NodeHealthRecord = {
  status: 'HEALTHY',
  cpu_load: 0.1,
  mem_used_pct: 10,
  disk_used_pct: 10,
  net_rtt_ms: 1,
  ceph_status: '',
  memory_total_bytes: 1024,
  memory_free_bytes: 512,
};

describe('NodeRegistry.heartbeat', () => {
  let harness: StoreHarness;
  let store: Store;

  beforeAll(async () => {
    harness = await embeddedHarness();
    store = await harness.open();
  });

  afterAll(async () => {
    await store.close();
    await harness.cleanup();
  });

  it('reads the node record once, and again only when another writer changed it meanwhile', async () => {
    const repos = createRepositories(store);
    let reads = 0;
    let interfere: (() => Promise<unknown>) | undefined;
    const nodes = Object.create(repos.nodes) as typeof repos.nodes;
    nodes.get = async (id) => {
      reads++;
      const found = await repos.nodes.get(id);
      const write = interfere;
      interfere = undefined;
      await write?.();
      return found;
    };
    const registry = new NodeRegistry(store, { nodes }, () => 30);
    const { record } = await registry.register(inventory);

    reads = 0;
    const first = await registry.heartbeat('node-a', record.id, health);
    expect(reads).toBe(1);
    expect(first.record.health).toEqual(health);

    // A re-registration lands between the heartbeat's read and its write: the write conflicts,
    // the record is read again, and both changes stand.
    reads = 0;
    interfere = () => repos.nodes.mutate('node-a', (current) => current && { ...current, labels: { rack: 'b' } });
    const second = await registry.heartbeat('node-a', record.id, { ...health, cpu_load: 0.5 });
    expect(reads).toBe(2);
    expect(second.record).toMatchObject({ labels: { rack: 'b' }, health: { cpu_load: 0.5 } });
    expect((await repos.nodes.get('node-a'))?.value).toMatchObject({ labels: { rack: 'b' }, health: { cpu_load: 0.5 } });
  });
});
