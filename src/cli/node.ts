// debvisorctl node list|get over NodeService.
import type { Command } from 'commander';
import { CephStatus, GetNodeResponseSchema, ListNetworksResponseSchema, ListNodesResponseSchema, NetworkKind, NodeHealth, NodeService, type Network, type Node } from '../gen/debvisor/v1/node_pb.js';
import { bytes, enumName, enumParser, when, withService } from './command.js';
import { printJson, printRecord, printTable } from './output.js';

function nodeRecord(node: Node): Record<string, string> {
  const metrics = node.metrics;
  return {
    hostname: node.hostname,
    id: node.id,
    ip: node.ip,
    online: String(node.online),
    health: enumName(NodeHealth, node.health),
    ...(node.rack ? { rack: node.rack } : {}),
    ...(node.zone ? { zone: node.zone } : {}),
    version: node.version,
    ...(Object.keys(node.labels).length ? { labels: Object.entries(node.labels).map(([key, value]) => `${key}=${value}`).join(', ') } : {}),
    ...(metrics
      ? {
          'cpu load': metrics.cpuLoad.toFixed(2),
          memory: `${metrics.memUsedPct.toFixed(1)}% used of ${bytes(metrics.memoryTotalBytes)}`,
          disk: `${metrics.diskUsedPct.toFixed(1)}% used`,
          ceph: enumName(CephStatus, metrics.cephStatus),
        }
      : {}),
    registered: when(node.registerTime),
    'last heartbeat': when(node.lastHeartbeatTime),
    'lease expires': when(node.leaseExpireTime),
  };
}

/** "10.0.0.1/24 (dhcp 10.0.0.2-10.0.0.9)", joined by ", ". */
function networkAddresses(network: Network): string {
  return network.addresses
    .map((a) => `${a.address}/${a.prefixLength}${a.dhcpRanges.length ? ` (dhcp ${a.dhcpRanges.map((r) => `${r.start}-${r.end}`).join(', ')})` : ''}`)
    .join(', ');
}

export function registerNodeCommands(program: Command): void {
  const withNodes = withService(program, NodeService);
  const node = program.command('node').description('hypervisor nodes of the cluster');

  node
    .command('list')
    .description('list registered nodes')
    .option('--zone <zone>', 'only nodes in this zone')
    .option('--online', 'only nodes whose lease is current')
    .action(
      withNodes(async ({ client, options, flags }, opts: { zone?: string; online?: boolean }) => {
        const response = await client.listNodes({ pageSize: 1000, zone: opts.zone ?? '', onlineOnly: opts.online ?? false }, options);
        if (flags.output === 'json') {
          printJson(ListNodesResponseSchema, response);
          return;
        }
        printTable(
          ['hostname', 'ip', 'zone', 'online', 'health', 'version', 'last heartbeat'],
          response.nodes.map((each) => [each.hostname, each.ip, each.zone, String(each.online), enumName(NodeHealth, each.health), each.version, when(each.lastHeartbeatTime)]),
        );
      }),
    );

  node
    .command('networks')
    .description("list this node's libvirt networks and host bridges")
    .option('--kind <kind>', 'only libvirt networks or host bridges (libvirt|bridge)', enumParser(NetworkKind))
    .action(
      withNodes(async ({ client, options, flags }, opts: { kind?: NetworkKind }) => {
        const response = await client.listNetworks({ kind: opts.kind ?? NetworkKind.UNSPECIFIED }, options);
        if (flags.output === 'json') {
          printJson(ListNetworksResponseSchema, response);
          return;
        }
        printTable(
          ['name', 'kind', 'bridge', 'active', 'forward', 'addresses'],
          response.networks.map((each) => [each.name, enumName(NetworkKind, each.kind), each.bridge, String(each.active), each.forwardMode, networkAddresses(each)]),
        );
      }),
    );

  node
    .command('get')
    .description('show one node with its latest metrics')
    .argument('<hostname>', 'node hostname')
    .action(
      withNodes(async ({ client, options, flags }, hostname: string) => {
        const response = await client.getNode({ hostname }, options);
        if (flags.output === 'json') printJson(GetNodeResponseSchema, response);
        else if (response.node) printRecord(nodeRecord(response.node));
      }),
    );
}
