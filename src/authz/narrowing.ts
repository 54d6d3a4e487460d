// A call made with an API key may only create keys no wider than that key: in
// permissions (canGrant, src/authz/decide.ts), and here in resource globs, source
// networks and expiry.
import { BlockList, isIP } from 'node:net';
import { OWNER_FILTERED_KINDS, type ResourceGlob } from './decide.js';
import { globWithin } from './globs.js';

/** The dimensions of a key besides its permissions. */
export interface KeyBounds {
  readonly resourceGlobs: readonly ResourceGlob[];
  readonly allowedCidrs: readonly string[];
  /** Milliseconds since the epoch; undefined: never expires. */
  readonly expiresAtMs: number | undefined;
}

/** One way a requested key would be wider than the key asking for it. */
export interface Widening {
  readonly field: 'resource_globs' | 'allowed_cidrs' | 'ttl';
  readonly reason: string;
}

interface Network {
  readonly address: string;
  readonly prefix: number;
  readonly family: 'ipv4' | 'ipv6';
}

function network(cidr: string): Network | undefined {
  const [address = '', bits] = cidr.split('/');
  const version = isIP(address);
  if (version === 0) return undefined;
  const family = version === 4 ? 'ipv4' : 'ipv6';
  const prefix = bits === undefined ? (version === 4 ? 32 : 128) : Number(bits);
  return Number.isInteger(prefix) && prefix >= 0 && prefix <= (version === 4 ? 32 : 128) ? { address, prefix, family } : undefined;
}

/**
 * True if every address of `inner` lies in `outer`: same family, a prefix at least as
 * long, and inner's address inside outer (then so is inner's whole network, whose first
 * bits are those of the address). IPv4 and IPv6 never contain each other here.
 */
export function cidrWithin(inner: string, outer: string): boolean {
  const a = network(inner);
  const b = network(outer);
  if (!a || !b || a.family !== b.family || a.prefix < b.prefix) return false;
  const list = new BlockList();
  list.addSubnet(b.address, b.prefix, b.family);
  return list.check(a.address, a.family);
}

function globsText(globs: readonly ResourceGlob[]): string {
  return globs.map((g) => `${g.kind}=${g.glob}`).join(', ');
}

/** What makes `requested` wider than `holder`; empty when it is no wider. */
export function wideningsOf(holder: KeyBounds, requested: KeyBounds): Widening[] {
  const out: Widening[] = [];
  if (holder.resourceGlobs.length > 0) {
    const scope = globsText(holder.resourceGlobs);
    if (requested.resourceGlobs.length === 0) out.push({ field: 'resource_globs', reason: `required, within ${scope}` });
    for (const glob of requested.resourceGlobs) {
      const own = holder.resourceGlobs.filter((g) => g.kind === glob.kind);
      // A kind the holder has no glob for is out of its scope, except kinds handlers filter by owner (operations).
      const within = own.length > 0 ? own.some((g) => globWithin(glob.glob, g.glob)) : OWNER_FILTERED_KINDS.has(glob.kind);
      if (!within) out.push({ field: 'resource_globs', reason: `${glob.kind}=${glob.glob} is not within ${scope}` });
    }
    // Without a glob of an owner-filtered kind, a key reaches all of the owner's resources of that kind.
    for (const kind of OWNER_FILTERED_KINDS) {
      if (holder.resourceGlobs.some((g) => g.kind === kind) && !requested.resourceGlobs.some((g) => g.kind === kind)) {
        out.push({ field: 'resource_globs', reason: `a ${kind} glob is required, within ${scope}` });
      }
    }
  }
  if (holder.allowedCidrs.length > 0) {
    const networks = holder.allowedCidrs.join(', ');
    if (requested.allowedCidrs.length === 0) out.push({ field: 'allowed_cidrs', reason: `required, within ${networks}` });
    for (const cidr of requested.allowedCidrs) {
      if (!holder.allowedCidrs.some((own) => cidrWithin(cidr, own))) out.push({ field: 'allowed_cidrs', reason: `${cidr} is not within ${networks}` });
    }
  }
  if (holder.expiresAtMs !== undefined && (requested.expiresAtMs === undefined || requested.expiresAtMs > holder.expiresAtMs)) {
    out.push({ field: 'ttl', reason: `must end by ${new Date(holder.expiresAtMs).toISOString()}, when this key expires` });
  }
  return out;
}
