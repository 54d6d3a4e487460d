// Subject alternative names as operators write them: "DNS:host", "IP:10.0.0.1",
// "URI:spiffe://debvisor/panel/web-panel" (the OpenSSL spelling).
import { isIP } from 'node:net';
import type { SubjectAltNames } from './issue.js';
import type { x509 } from './x509.js';

export type SanKind = 'DNS' | 'IP' | 'URI';

/** Mutable, complete SAN lists (SubjectAltNames with every list present). */
export interface SanLists {
  dnsNames: string[];
  ipAddresses: string[];
  uris: string[];
}

/** DNS, IP and URI names of a parsed SubjectAlternativeName extension. */
export function sanListsOf(names: x509.GeneralNames | undefined): SanLists {
  const out: SanLists = { dnsNames: [], ipAddresses: [], uris: [] };
  for (const name of names?.items ?? []) {
    if (name.type === 'dns') out.dnsNames.push(name.value);
    else if (name.type === 'ip') out.ipAddresses.push(name.value);
    else if (name.type === 'url') out.uris.push(name.value);
  }
  return out;
}

/** Parse ["DNS:a", "IP:b", "URI:c"] into the issuer's SAN lists; throws on anything else. */
export function parseSanList(entries: readonly string[]): SanLists {
  const out: SanLists = { dnsNames: [], ipAddresses: [], uris: [] };
  for (const entry of entries) {
    const colon = entry.indexOf(':');
    const kind = colon > 0 ? entry.slice(0, colon).toUpperCase() : '';
    const value = entry.slice(colon + 1).trim();
    if (value === '') throw new Error(`invalid SAN "${entry}": expected DNS:name, IP:address or URI:uri`);
    switch (kind) {
      case 'DNS':
        out.dnsNames.push(value);
        break;
      case 'IP':
        if (isIP(value) === 0) throw new Error(`invalid SAN "${entry}": not an IP address`);
        out.ipAddresses.push(value);
        break;
      case 'URI':
        if (!URL.canParse(value)) throw new Error(`invalid SAN "${entry}": not a URI`);
        out.uris.push(value);
        break;
      default:
        throw new Error(`invalid SAN "${entry}": expected DNS:name, IP:address or URI:uri`);
    }
  }
  return out;
}

/** The canonical "KIND:value" strings of a SAN set (IPs normalised, DNS lower-cased). */
export function formatSans(sans: SubjectAltNames): string[] {
  return [
    ...(sans.dnsNames ?? []).map((dns) => `DNS:${dns.toLowerCase()}`),
    ...(sans.ipAddresses ?? []).map((ip) => `IP:${normalizeIp(ip)}`),
    ...(sans.uris ?? []).map((uri) => `URI:${uri}`),
  ];
}

function normalizeIp(ip: string): string {
  if (isIP(ip) !== 6) return ip;
  // Expand and re-compress through URL's canonical IPv6 form.
  try {
    return new URL(`http://[${ip}]/`).hostname.slice(1, -1);
  } catch {
    return ip.toLowerCase();
  }
}
