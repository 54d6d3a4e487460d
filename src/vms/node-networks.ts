// This node's network names for CreateVm until NodeService.ListNetworks' HostNetworks
// (src/backends/libvirt/networks.ts, branch h/vm-parts) is merged: libvirt networks from
// `virsh net-list --all --name`, host bridges from sysfs. Replace with HostNetworks.list at merge.
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Libvirt } from '../backends/libvirt/virsh.js';
import type { NodeNetwork } from './provisioning.js';

export async function nodeNetworks(libvirt: Libvirt, options: { signal?: AbortSignal }, sysClassNet = '/sys/class/net'): Promise<NodeNetwork[]> {
  const networks = (await libvirt.networkNames(options)).map((name): NodeNetwork => ({ name, kind: 'network' }));
  let entries: string[] = [];
  try {
    entries = await readdir(sysClassNet);
  } catch {
    // No sysfs (a container without it): no bridges.
  }
  const bridges = await Promise.all(
    entries.map(async (name) => ((await stat(join(sysClassNet, name, 'bridge')).catch(() => undefined))?.isDirectory() ? [{ name, kind: 'bridge' as const }] : [])),
  );
  return [...networks, ...bridges.flat()];
}
