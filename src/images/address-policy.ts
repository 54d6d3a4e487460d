// The SSRF guard of image downloads: which IP addresses the daemon may connect to for an image.
// Refused unless allow-listed (images.allowed_networks): every address that is not public unicast —
// loopback, link-local (169.254/16 holds cloud metadata), private, CGNAT, unique-local, unspecified,
// multicast, reserved, documentation — and IPv6 forms that embed such an IPv4 address
// (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d, 6to4).
// The CIDR matching is node:net BlockList's; it matches an IPv4 rule against IPv4-mapped IPv6 too.
import { BlockList, isIP } from 'node:net';
import { ImageFetchError } from './errors.js';
import { parseCidr } from '../config/cidr.js';

export { parseCidr };

/** Networks refused by default, with why (for logs). */
const REFUSED_NETWORKS: readonly (readonly [string, number, 'ipv4' | 'ipv6', string])[] = [
  ['0.0.0.0', 8, 'ipv4', 'this network / unspecified'],
  ['10.0.0.0', 8, 'ipv4', 'private'],
  ['100.64.0.0', 10, 'ipv4', 'carrier-grade NAT'],
  ['127.0.0.0', 8, 'ipv4', 'loopback'],
  ['169.254.0.0', 16, 'ipv4', 'link-local (cloud metadata)'],
  ['172.16.0.0', 12, 'ipv4', 'private'],
  ['192.0.0.0', 24, 'ipv4', 'IETF protocol assignments'],
  ['192.0.2.0', 24, 'ipv4', 'documentation'],
  ['192.88.99.0', 24, 'ipv4', '6to4 relay anycast'],
  ['192.168.0.0', 16, 'ipv4', 'private'],
  ['198.18.0.0', 15, 'ipv4', 'benchmarking'],
  ['198.51.100.0', 24, 'ipv4', 'documentation'],
  ['203.0.113.0', 24, 'ipv4', 'documentation'],
  ['224.0.0.0', 4, 'ipv4', 'multicast'],
  ['240.0.0.0', 4, 'ipv4', 'reserved / broadcast'],
  ['::', 128, 'ipv6', 'unspecified'],
  ['::1', 128, 'ipv6', 'loopback'],
  ['::', 96, 'ipv6', 'IPv4-compatible (deprecated)'],
  ['64:ff9b:1::', 48, 'ipv6', 'local-use NAT64'],
  ['100::', 64, 'ipv6', 'discard-only'],
  ['2001::', 23, 'ipv6', 'IETF protocol assignments (Teredo, ORCHID)'],
  ['2001:db8::', 32, 'ipv6', 'documentation'],
  ['2002::', 16, 'ipv6', '6to4 (deprecated; embeds an IPv4 address)'],
  ['3fff::', 20, 'ipv6', 'documentation'],
  ['fc00::', 7, 'ipv6', 'unique-local'],
  ['fe80::', 10, 'ipv6', 'link-local'],
  ['fec0::', 10, 'ipv6', 'site-local (deprecated)'],
  ['ff00::', 8, 'ipv6', 'multicast'],
];

const refused = new BlockList();
for (const [address, prefix, family] of REFUSED_NETWORKS) refused.addSubnet(address, prefix, family);

/** The well-known NAT64 prefix: the last 32 bits are the IPv4 address really reached. */
const nat64 = new BlockList();
nat64.addSubnet('64:ff9b::', 96, 'ipv6');

/** The IPv4 address in the last 32 bits of an IPv6 address, as a dotted quad. */
function lastIpv4(address: string): string | undefined {
  const tail = address.split(':').slice(-2);
  if (tail.length === 1 || tail[1]?.includes('.') === true) return tail[tail.length - 1];
  const [high = '0', low = '0'] = tail.map((h) => (h === '' ? '0' : h));
  const word = (parseInt(high, 16) << 16) | parseInt(low, 16);
  return [word >>> 24, (word >>> 16) & 255, (word >>> 8) & 255, word & 255].join('.');
}

export class AddressPolicy {
  private readonly allowed = new BlockList();

  /** `allowedNetworks`: CIDRs exempt from the refusals; a malformed one is a programming error (config validates them). */
  constructor(allowedNetworks: readonly string[] = []) {
    for (const text of allowedNetworks) {
      const cidr = parseCidr(text);
      if (!cidr) throw new TypeError(`allowed network ${JSON.stringify(text)} is not a CIDR`);
      this.allowed.addSubnet(cidr.address, cidr.prefix, cidr.family);
    }
  }

  /** True when the daemon may connect to this IP address (an address literal, as Node reports it). */
  permits(address: string): boolean {
    const version = isIP(address);
    if (version === 0) return false;
    const family = version === 4 ? 'ipv4' : 'ipv6';
    if (this.allowed.check(address, family)) return true;
    if (refused.check(address, family)) return false;
    if (family === 'ipv6' && nat64.check(address, 'ipv6')) {
      const embedded = lastIpv4(address);
      return embedded !== undefined && this.permits(embedded);
    }
    return true;
  }

  /** Throws ImageFetchError('address_refused') unless permits(address). `host` is the URL's host, for the message. */
  check(address: string, host: string): void {
    if (this.permits(address)) return;
    throw new ImageFetchError(
      'address_refused',
      `the image server ${host} is at an address this node does not download from (loopback, link-local, private or reserved networks are refused unless images.allowed_networks lists them)`,
      `image host ${host} resolved to refused address ${address}`,
    );
  }
}
