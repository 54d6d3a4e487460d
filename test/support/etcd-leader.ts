// Which member of a test etcd cluster leads, asked of the members themselves (etcd3's
// maintenance status: each member reports its own id and the leader's).
import { Etcd3 } from 'etcd3';
import type { EtcdCluster } from './etcd.js';

/** The index (in `cluster.endpoints`) of the current leader; waits for one until `timeoutMs`. */
export async function leaderIndex(cluster: EtcdCluster, timeoutMs = 30_000): Promise<number> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    for (const [index, endpoint] of cluster.endpoints.entries()) {
      const client = new Etcd3({ hosts: endpoint, dialTimeout: 2000 });
      try {
        const status = await client.maintenance.status();
        if (status.leader !== '0' && status.leader === status.header.member_id) return index;
      } catch {
        // A stopped or electing member: ask the next one.
      } finally {
        client.close();
      }
    }
    if (Date.now() > until) throw new Error(`no etcd leader within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
