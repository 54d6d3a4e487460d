// Ceph monitor addresses as the config names them (libvirt.vm_defaults.rbd_monitors): "host:port"
// with an IPv4 address, a bracketed IPv6 address or a DNS name. They end up as <host name port>
// of RBD disk sources, so QEMU reaches the cluster without a ceph.conf of its own.
import { isIP } from 'node:net';

export interface CephMonitor {
  /** An IPv4 address, an IPv6 address (no brackets) or a DNS name. */
  readonly host: string;
  readonly port: number;
}

const DNS_LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;

function dnsName(host: string): boolean {
  return host.length <= 253 && host.split('.').every((label) => DNS_LABEL.test(label)) && !/^[0-9.]+$/.test(host);
}

/** "10.0.0.1:6789", "[fd00::1]:3300", "mon1.example.net:3300"; undefined when malformed. */
export function parseCephMonitor(text: string): CephMonitor | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (!match) return undefined;
  const [, bracketed, plain, portText = ''] = match;
  const port = Number(portText);
  if (port < 1 || port > 65535) return undefined;
  // No zone id ("fe80::1%eth0"): Ceph's address parser has none.
  if (bracketed !== undefined) return /^[0-9A-Fa-f:.]+$/.test(bracketed) && isIP(bracketed) === 6 ? { host: bracketed, port } : undefined;
  const host = plain ?? '';
  // A dotted-digits name that is not an IPv4 address ("10.0.0.256") is a typo, not a DNS name.
  return isIP(host) === 4 || dnsName(host) ? { host, port } : undefined;
}
