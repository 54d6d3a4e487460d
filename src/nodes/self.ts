// nodes.self_register: the daemon registers its own host (node.name) and heartbeats it
// every interval, so a cluster of daemons on one store sees itself in ListNodes.
import { statfs } from 'node:fs/promises';
import { cpus, freemem, loadavg, networkInterfaces, totalmem } from 'node:os';
import type { Logger } from 'pino';
import { validateHostname } from '../backends/validate.js';
import { VERSION } from '../version.js';
import { UnknownNodeError, type NodeHealthRecord, type NodeRegistry } from './registry.js';

/** The first non-internal address (IPv4 preferred), else loopback. */
export function primaryAddress(): string {
  const addresses = Object.values(networkInterfaces()).flatMap((list) => list ?? []).filter((a) => !a.internal);
  return (addresses.find((a) => a.family === 'IPv4') ?? addresses.find((a) => a.family === 'IPv6' && !a.address.startsWith('fe80')))?.address ?? '127.0.0.1';
}

async function localHealth(): Promise<NodeHealthRecord> {
  const total = totalmem();
  const free = freemem();
  let diskUsedPct = 0;
  try {
    const fs = await statfs('/');
    diskUsedPct = fs.blocks > 0 ? Math.min(100, ((fs.blocks - fs.bfree) / fs.blocks) * 100) : 0;
  } catch {
    // Unknown: reported as 0.
  }
  const memUsedPct = total > 0 ? Math.min(100, ((total - free) / total) * 100) : 0;
  const cpuLoad = (loadavg()[0] ?? 0) / Math.max(1, cpus().length);
  return {
    status: memUsedPct > 95 || diskUsedPct > 95 ? 'DEGRADED' : 'HEALTHY',
    cpu_load: cpuLoad,
    mem_used_pct: memUsedPct,
    disk_used_pct: diskUsedPct,
    net_rtt_ms: 0,
    ceph_status: 'UNSPECIFIED',
    memory_total_bytes: total,
    memory_free_bytes: free,
  };
}

/**
 * Starts registering and heartbeating; the returned function stops it. `afterHeartbeat` starts after
 * each successful heartbeat unless the previous one is still running (publishing this node's VM
 * inventory); its failure is logged, not fatal.
 */
export function startSelfRegistration(registry: NodeRegistry, name: string, log: Logger, afterHeartbeat?: (hostname: string) => Promise<void>): () => void {
  let hostname: string;
  try {
    hostname = validateHostname(name, 'node.name');
  } catch (err) {
    log.error({ err: err instanceof Error ? err.message : String(err) }, 'nodes.self_register: node.name is not a valid hostname; not registering this host');
    return () => undefined;
  }
  let registered = false;
  let publishing = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  // One tick at a time: the next is scheduled only once this one has settled.
  const tick = async () => {
    if (stopped) return;
    try {
      if (!registered) {
        await registry.register({ hostname, ip: primaryAddress(), rack: '', zone: '', version: VERSION, labels: {} });
        registered = true;
        log.info({ hostname }, 'registered this host as a node');
      }
      await registry.heartbeat(hostname, '', await localHealth());
      // Not awaited: a slow libvirt must never delay the next heartbeat (a lapsed lease would make
      // this live node look dead, and FailoverVM would then allow a second copy of its VMs).
      if (afterHeartbeat && !publishing) {
        publishing = true;
        void afterHeartbeat(hostname)
          .catch((err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err), hostname }, "publishing this node's VM inventory failed"))
          .finally(() => (publishing = false));
      }
    } catch (err) {
      // Deleted from the store meanwhile: register again on the next tick.
      if (err instanceof UnknownNodeError) registered = false;
      log.warn({ err: err instanceof Error ? err.message : String(err), hostname }, 'self heartbeat failed');
    }
  };
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      void tick().finally(schedule);
    }, registry.heartbeatIntervalSeconds() * 1000);
  };
  void tick().finally(schedule);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
