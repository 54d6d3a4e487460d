// NodeService: the node inventory and liveness (src/nodes/registry.ts). Online comes
// from the node's liveness lease in the store, never from comparing timestamps.
import type { MessageInitShape } from '@bufbuild/protobuf';
import { durationFromMs, timestampFromDate } from '@bufbuild/protobuf/wkt';
import { CephStatus, NetworkKind, NodeHealth, type NetworkSchema, type NodeSchema, type NodeService } from '../gen/debvisor/v1/node_pb.js';
import { keyScopeShows } from '../authz/decide.js';
import type { HostNetwork, HostNetworks } from '../backends/libvirt/networks.js';
import { validateHostname, validateIpAddress } from '../backends/validate.js';
import { NodeIdMismatchError, UnknownNodeError, type NodeHealthRecord, type NodeRegistry, type NodeView } from '../nodes/registry.js';
import type { HandlersOf } from '../rpc/adapter.js';
import { InvalidArgumentError, RpcError, UnauthenticatedError } from '../rpc/errors.js';
import { pageByKey } from '../rpc/paging.js';
import { timestampOfIso } from './timestamp.js';

const MAX_TEXT = 255;
const MAX_LABELS = 64;


const HEALTHS = [NodeHealth.UNSPECIFIED, NodeHealth.HEALTHY, NodeHealth.DEGRADED, NodeHealth.CRITICAL];
const CEPH = [CephStatus.UNSPECIFIED, CephStatus.HEALTH_OK, CephStatus.HEALTH_WARN, CephStatus.HEALTH_ERR, CephStatus.UNREACHABLE];

/** Stored records keep enum names ('HEALTHY'); an unknown name reads as UNSPECIFIED. */
function healthOf(name: string | undefined): NodeHealth {
  return HEALTHS.find((value) => NodeHealth[value] === name) ?? NodeHealth.UNSPECIFIED;
}

function cephOf(name: string | undefined): CephStatus {
  return CEPH.find((value) => CephStatus[value] === name) ?? CephStatus.UNSPECIFIED;
}

export function nodeMessage(view: NodeView): MessageInitShape<typeof NodeSchema> {
  const { record } = view;
  const health = record.health;
  return {
    id: record.id,
    hostname: record.hostname,
    ip: record.ip,
    rack: record.rack,
    zone: record.zone,
    version: record.version,
    labels: { ...record.labels },
    online: view.online,
    health: healthOf(health?.status),
    metrics: health
      ? {
          cpuLoad: health.cpu_load,
          memUsedPct: health.mem_used_pct,
          diskUsedPct: health.disk_used_pct,
          netRttMs: health.net_rtt_ms,
          cephStatus: cephOf(health.ceph_status),
          memoryTotalBytes: BigInt(health.memory_total_bytes),
          memoryFreeBytes: BigInt(health.memory_free_bytes),
        }
      : undefined,
    registerTime: timestampOfIso(record.registered_at),
    updateTime: timestampOfIso(record.updated_at),
    lastHeartbeatTime: timestampOfIso(record.last_heartbeat_at),
    leaseExpireTime: timestampOfIso(record.lease_expires_at),
  };
}

export function networkMessage(network: HostNetwork): MessageInitShape<typeof NetworkSchema> {
  return {
    name: network.name,
    kind: network.kind === 'libvirt' ? NetworkKind.LIBVIRT : NetworkKind.BRIDGE,
    bridge: network.bridge,
    active: network.active,
    forwardMode: network.forwardMode,
    addresses: network.addresses.map((a) => ({ address: a.address, prefixLength: a.prefixLength, dhcpRanges: a.dhcpRanges.map((r) => ({ start: r.start, end: r.end })) })),
  };
}

function text(value: string, field: string): string {
  if (value.length > MAX_TEXT) throw new InvalidArgumentError(field, `must be at most ${MAX_TEXT} characters`);
  if (/\p{Cc}/u.test(value)) throw new InvalidArgumentError(field, 'must not contain control characters');
  return value;
}

function labels(value: Record<string, string>): Record<string, string> {
  const entries = Object.entries(value);
  if (entries.length > MAX_LABELS) throw new InvalidArgumentError('labels', `at most ${MAX_LABELS} labels`);
  for (const [key, v] of entries) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/.test(key)) throw new InvalidArgumentError('labels', `invalid label key ${JSON.stringify(key.slice(0, 70))}`);
    text(v, `labels[${key}]`);
  }
  return Object.fromEntries(entries);
}

function nonNegative(value: number, field: string): number {
  if (!Number.isFinite(value) || value < 0) throw new InvalidArgumentError(field, 'must be a non-negative number');
  return value;
}

function percent(value: number, field: string): number {
  if (!Number.isFinite(value) || value < 0 || value > 100) throw new InvalidArgumentError(field, 'must be a percentage between 0 and 100');
  return value;
}

function byteCount(value: bigint, field: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidArgumentError(field, 'too large');
  return Number(value);
}

function enumName(names: Record<string | number, string | number>, prefix: string, value: number, field: string): string {
  const name = names[value];
  if (typeof name !== 'string') throw new InvalidArgumentError(field, `unknown ${prefix} value ${value}`);
  return name;
}

function hostname(value: string): string {
  if (!value) throw new InvalidArgumentError('hostname', 'required');
  return validateHostname(value, 'hostname');
}

export function nodeHandlers(registry: NodeRegistry, networks: HostNetworks): HandlersOf<typeof NodeService> {
  const interval = () => durationFromMs(registry.heartbeatIntervalSeconds() * 1000);
  const notFound = (name: string) => new RpcError('NOT_FOUND', `node ${name} is not registered`);

  return {
    registerNode: async (request) => {
      const name = hostname(request.hostname);
      if (!request.ip) throw new InvalidArgumentError('ip', 'required');
      const ip = validateIpAddress(request.ip, 'ip');
      const view = await registry.register({
        hostname: name,
        ip,
        rack: text(request.rack, 'rack'),
        zone: text(request.zone, 'zone'),
        version: text(request.version, 'version'),
        labels: labels(request.labels),
      });
      return { node: nodeMessage(view), heartbeatInterval: interval() };
    },

    heartbeat: async (request) => {
      const name = hostname(request.hostname);
      const metrics = request.metrics;
      const health: NodeHealthRecord = {
        status: enumName(NodeHealth, 'NodeHealth', request.status, 'status'),
        cpu_load: nonNegative(metrics?.cpuLoad ?? 0, 'metrics.cpu_load'),
        mem_used_pct: percent(metrics?.memUsedPct ?? 0, 'metrics.mem_used_pct'),
        disk_used_pct: percent(metrics?.diskUsedPct ?? 0, 'metrics.disk_used_pct'),
        net_rtt_ms: nonNegative(metrics?.netRttMs ?? 0, 'metrics.net_rtt_ms'),
        ceph_status: enumName(CephStatus, 'CephStatus', metrics?.cephStatus ?? CephStatus.UNSPECIFIED, 'metrics.ceph_status'),
        memory_total_bytes: byteCount(metrics?.memoryTotalBytes ?? 0n, 'metrics.memory_total_bytes'),
        memory_free_bytes: byteCount(metrics?.memoryFreeBytes ?? 0n, 'metrics.memory_free_bytes'),
      };
      if (health.memory_free_bytes > health.memory_total_bytes && health.memory_total_bytes > 0) {
        throw new InvalidArgumentError('metrics.memory_free_bytes', 'must not exceed metrics.memory_total_bytes');
      }
      try {
        const { leaseExpiresAt } = await registry.heartbeat(name, request.nodeId, health);
        return { leaseExpireTime: timestampFromDate(leaseExpiresAt), heartbeatInterval: interval() };
      } catch (err) {
        if (err instanceof UnknownNodeError) throw notFound(name);
        if (err instanceof NodeIdMismatchError) throw new InvalidArgumentError('node_id', err.message);
        throw err;
      }
    },

    listNodes: async (request) => {
      const matching = (await registry.all()).filter((view) => (!request.zone || view.record.zone === request.zone) && (!request.onlineOnly || view.online));
      const page = pageByKey(matching, (view) => view.record.hostname, request);
      return { nodes: page.items.map(nodeMessage), nextPageToken: page.nextPageToken };
    },

    getNode: async (request) => {
      const name = hostname(request.hostname);
      const view = await registry.get(name);
      if (!view) throw notFound(name);
      return { node: nodeMessage(view) };
    },

    listNetworks: async (request, ctx) => {
      if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
      if (!(request.kind in NetworkKind)) throw new InvalidArgumentError('kind', `unknown NetworkKind value ${request.kind}`);
      const call = { signal: ctx.signal };
      const found =
        request.kind === NetworkKind.LIBVIRT ? await networks.libvirtNetworks(call) : request.kind === NetworkKind.BRIDGE ? await networks.hostBridges() : await networks.list(call);
      // A scoped API key lists only the networks its `network` globs allow (list RPCs name no target for RBAC).
      const scope = ctx.principal.apiKey?.resourceGlobs;
      const visible = found.filter((n) => keyScopeShows(scope, 'network', n.name));
      return { networks: visible.map(networkMessage) };
    },
  };
}
