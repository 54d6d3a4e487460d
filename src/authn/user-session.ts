// User session tokens (`dvs_<session id>_<secret>`) and their verification: the
// impersonation step checks the impersonate-session header with UserSessionAuthenticator.
// O(1) by session id in the watch-fed session cache, no store round trip; the cache
// replaces a record on every change, so a revocation by any daemon is seen within a second.
import type { RecordCache } from '../store/cache.js';
import type { UserSessionRecord } from '../store/records.js';
import { UnauthenticatedError } from '../rpc/errors.js';
import { SecretTokenFormat, secretMatches } from './secret-token.js';

export const USER_SESSION_TOKENS = new SecretTokenFormat('dvs_');

/** What the call claims the session is for: the user acted for and the certificate acting. */
export interface SessionExpectation {
  /** The principal id, `user:<name>`. */
  readonly user: string;
  /** SHA-256 of the impersonating certificate, lowercase hex. */
  readonly certFingerprint: string;
}

export class UserSessionAuthenticator {
  constructor(private readonly sessions: Pick<RecordCache<UserSessionRecord>, 'get'>) {}

  /**
   * The session id of a token that is live and bound to `expect`; else UnauthenticatedError
   * whose reason (audit only) says which check failed.
   */
  verify(token: string, expect: SessionExpectation, nowMs = Date.now()): string {
    const parsed = USER_SESSION_TOKENS.parse(token);
    if (!parsed) throw new UnauthenticatedError('malformed user session token');
    const session = this.sessions.get(parsed.id);
    if (!session) throw new UnauthenticatedError(`unknown user session ${parsed.id}`);
    // The secret first: without it, nothing about the session's state is revealed in the reason.
    if (!secretMatches(parsed.secret, session.secret_sha256)) throw new UnauthenticatedError(`wrong secret for user session ${parsed.id}`);
    if (session.cert_fingerprint_sha256 !== expect.certFingerprint) {
      throw new UnauthenticatedError(`user session ${parsed.id} is bound to another certificate (${session.impersonated_by}, sha256 ${session.cert_fingerprint_sha256})`);
    }
    if (session.user !== expect.user) throw new UnauthenticatedError(`user session ${parsed.id} is for ${session.user}, not ${expect.user}`);
    if (session.revoked_at !== undefined) throw new UnauthenticatedError(`user session ${parsed.id} is revoked`);
    if (Date.parse(session.expires_at) <= nowMs) throw new UnauthenticatedError(`user session ${parsed.id} expired`);
    return session.id;
  }
}
