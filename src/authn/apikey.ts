// API-key authentication: O(1) lookup by key id in an in-memory copy of the keys,
// constant-time secret comparison, expiry and source-CIDR checks. No store round
// trip per call; usage statistics are batched to one write per key per second.
//
// A key verified on a connection is remembered for that connection (keyed by the
// connection object in a WeakMap, so it dies with it), together with the exact token
// and the exact key record it was verified against. A later call on the same
// connection presenting the same token skips the parse and the SHA-256 only while the
// key index still holds that very record object: the index is watch-fed and replaces
// the record on every change (revocation, rotation, deletion), so any change makes the
// next call verify from scratch. Revocation and expiry are still checked on every call.
import { BlockList, isIPv6 } from 'node:net';
import type { ApiKeyRecord } from '../store/records.js';
import type { RecordCache } from '../store/cache.js';
import type { Repository } from '../store/repository.js';
import { UnauthenticatedError } from '../rpc/errors.js';
import { parseToken, secretMatches } from './apikey-token.js';
import type { Principal } from '../rpc/principal.js';

const allowLists = new WeakMap<ApiKeyRecord, BlockList>();

/** A known key id presented with a wrong secret: counted against that key id too (source-guard.ts). */
export class WrongSecretError extends UnauthenticatedError {
  constructor(readonly keyId: string) {
    super(`wrong secret for API key ${keyId}`);
  }
}

/** The key's CIDR allow-list, parsed once per record version. */
function allowListOf(record: ApiKeyRecord): BlockList {
  let list = allowLists.get(record);
  if (!list) {
    list = new BlockList();
    for (const cidr of record.allowed_cidrs) {
      const [address = '', bits] = cidr.split('/');
      const family = isIPv6(address) ? 'ipv6' : 'ipv4';
      list.addSubnet(address, Number(bits ?? (family === 'ipv6' ? 128 : 32)), family);
    }
    allowLists.set(record, list);
  }
  return list;
}

/** Strips the IPv4-mapped IPv6 prefix so `::ffff:10.0.0.1` matches an IPv4 CIDR. */
export function normalizeIp(ip: string): { address: string; family: 'ipv4' | 'ipv6' } {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (mapped?.[1]) return { address: mapped[1], family: 'ipv4' };
  return { address: ip, family: isIPv6(ip) ? 'ipv6' : 'ipv4' };
}

/** A token verified on one connection, and what it was verified against. */
interface VerifiedOnConnection {
  readonly token: string;
  readonly keyId: string;
  readonly sourceIp: string;
  readonly record: ApiKeyRecord;
  /** Date.parse(record.expires_at), or Infinity. */
  readonly expiresAtMs: number;
  readonly principal: Principal;
}

export class ApiKeyAuthenticator {
  private readonly byConnection = new WeakMap<object, VerifiedOnConnection>();
  private readonly usage = new Map<string, { count: number; lastUsed: number }>();
  private readonly flushTimer: NodeJS.Timeout;

  constructor(
    private readonly keys: RecordCache<ApiKeyRecord>,
    private readonly repository: Repository<ApiKeyRecord>,
    private readonly onProblem: (err: unknown) => void,
    flushIntervalMs = 1000,
  ) {
    this.flushTimer = setInterval(() => void this.flushUsage(), flushIntervalMs);
    this.flushTimer.unref();
  }

  /**
   * `connection` (optional) is an object that lives exactly as long as the caller's
   * connection: the verification is then remembered for later calls on it.
   */
  authenticate(token: string, sourceIp: string, now = Date.now(), connection?: object): Principal {
    if (connection) {
      const known = this.byConnection.get(connection);
      if (known && known.token === token && known.sourceIp === sourceIp) {
        const { record, keyId } = known;
        if (this.keys.get(keyId) === record) {
          // Unchanged record, so secret and CIDR still match; time moves, so expiry is re-checked.
          if (record.revoked_at !== undefined) throw new UnauthenticatedError(`API key ${keyId} is revoked`);
          if (known.expiresAtMs <= now) throw new UnauthenticatedError(`API key ${keyId} expired`);
          this.countUse(record.id, now);
          return known.principal;
        }
      }
    }
    const parsed = parseToken(token);
    if (!parsed) throw new UnauthenticatedError('malformed API key');
    const record = this.keys.get(parsed.keyId);
    if (!record) throw new UnauthenticatedError(`unknown API key id ${parsed.keyId}`);
    // Check the secret before revealing anything else about the key's state in the audit reason.
    if (!secretMatches(parsed.secret, record.secret_sha256)) throw new WrongSecretError(parsed.keyId);
    if (record.revoked_at !== undefined) throw new UnauthenticatedError(`API key ${parsed.keyId} is revoked`);
    if (record.expires_at !== undefined && Date.parse(record.expires_at) <= now) throw new UnauthenticatedError(`API key ${parsed.keyId} expired`);
    if (record.allowed_cidrs.length > 0) {
      const { address, family } = normalizeIp(sourceIp);
      if (!allowListOf(record).check(address, family)) throw new UnauthenticatedError(`API key ${parsed.keyId} used from ${sourceIp}, outside its allowed networks`);
    }
    this.countUse(record.id, now);
    const principal: Principal = { id: record.owner, kind: 'api_key', apiKey: { id: record.id, permissions: record.permissions, resourceGlobs: record.resource_globs } };
    if (connection) {
      const expiresAtMs = record.expires_at === undefined ? Infinity : Date.parse(record.expires_at);
      this.byConnection.set(connection, { token, keyId: parsed.keyId, sourceIp, record, expiresAtMs, principal });
    }
    return principal;
  }

  private countUse(keyId: string, now: number): void {
    const used = this.usage.get(keyId);
    if (used) {
      used.count++;
      used.lastUsed = now;
    } else {
      this.usage.set(keyId, { count: 1, lastUsed: now });
    }
  }

  /** Writes the batched use counts: at most one write per key per interval. */
  async flushUsage(): Promise<void> {
    const batch = [...this.usage];
    this.usage.clear();
    await Promise.all(
      batch.map(([id, { count, lastUsed }]) =>
        this.repository
          .mutate(id, (current) => current && { ...current, use_count: current.use_count + count, last_used_at: new Date(lastUsed).toISOString() })
          .catch((err: unknown) => this.onProblem(err)),
      ),
    );
  }

  async close(): Promise<void> {
    clearInterval(this.flushTimer);
    await this.flushUsage();
  }
}
