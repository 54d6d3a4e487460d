// User sessions (CreateUserSession, ListUserSessions, RevokeUserSession): the rules behind
// them, apart from the protobuf mapping in src/services/access-sessions.ts. A session is
// made by an impersonated call and bound to its user and to the impersonating certificate.
// Creation and revocation are audited as SECURITY events; tokens never reach the log.
import type { AuditLog } from '../audit/log.js';
import { crossPrincipal } from '../authz/permission.js';
import { USER_SESSION_TOKENS } from '../authn/user-session.js';
import type { Config } from '../config/schema.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import { userPrincipalOf } from '../rpc/impersonation-names.js';
import { pageByKey } from '../rpc/paging.js';
import type { Principal } from '../rpc/principal.js';
import { NotFoundError } from '../store/errors.js';
import type { UserSessionRecord } from '../store/records.js';
import type { Repositories } from '../store/repositories.js';
import { retryOnConflict } from '../store/repository.js';
import { ownerResources, type AccessState } from './state.js';

const LIST = 'access:session:list';
const REVOKE = 'access:session:revoke';
/** How long a revoked or expired session stays listable (include_inactive) before it is deleted. */
const ENDED_RETENTION_MS = 86_400_000;

export function isLive(session: UserSessionRecord, nowMs: number): boolean {
  return session.revoked_at === undefined && Date.parse(session.expires_at) > nowMs;
}

function endedAt(session: UserSessionRecord): number {
  return Math.min(Date.parse(session.expires_at), session.revoked_at === undefined ? Infinity : Date.parse(session.revoked_at));
}

export class UserSessions {
  constructor(
    private readonly repos: Repositories,
    private readonly state: AccessState,
    private readonly audit: AuditLog,
    private readonly settings: () => Config,
  ) {}

  private caller(ctx: CallContext): Principal {
    if (!ctx.principal) throw new RpcError('UNAUTHENTICATED', 'no principal');
    return ctx.principal;
  }

  /**
   * Sessions a caller may see or revoke without the `:any` permission: its own as a user,
   * and, as a certificate acting for nobody, those it created.
   */
  private isOwnOrCreated(caller: Principal, session: UserSessionRecord): boolean {
    return session.user === caller.id || (caller.delegation === undefined && session.impersonated_by === caller.id);
  }

  private security(ctx: CallContext, reason: string, object: string, details: Record<string, unknown>): void {
    this.audit.write({ type: 'SECURITY', trace_id: ctx.traceId, principal: this.state.auditPrincipalOf(this.caller(ctx)), source: ctx.peer, object, reason, details });
  }

  /** A token for the user the call acts for, bound to it and to the certificate acting. Shown once. */
  async create(ctx: CallContext, request: { ttlMs: number | undefined }): Promise<{ record: UserSessionRecord; token: string }> {
    const caller = this.caller(ctx);
    const delegation = caller.delegation;
    if (!delegation) {
      throw new RpcError('FAILED_PRECONDITION', 'CreateUserSession acts for a user: call it with the impersonate-user header, from a certificate holding access:impersonate');
    }
    const fingerprint = delegation.by.certificate?.fingerprintSha256;
    if (!fingerprint) throw new RpcError('FAILED_PRECONDITION', 'a user session needs a client certificate acting for the user');
    const limits = this.settings().auth.impersonation;
    const ttlMs = request.ttlMs ?? limits.session_ttl_seconds * 1000;
    if (!(ttlMs >= 1000 && ttlMs <= limits.max_session_ttl_seconds * 1000)) {
      throw new InvalidArgumentError('ttl', `must be between 1 s and ${limits.max_session_ttl_seconds} s (auth.impersonation.max_session_ttl_seconds)`);
    }
    const now = Date.now();
    const { token, id, secretSha256 } = USER_SESSION_TOKENS.issue();
    const record: UserSessionRecord = {
      schema_version: 1,
      id,
      user: caller.id,
      impersonated_by: delegation.by.id,
      cert_fingerprint_sha256: fingerprint,
      secret_sha256: secretSha256,
      created_at: new Date(now).toISOString(),
      expires_at: new Date(now + ttlMs).toISOString(),
    };
    const stored = await this.repos.userSessions.create(id, record);
    this.state.userSessions.remember(id, record, stored.modRevision);
    this.security(ctx, 'user session created', `user_session:${id}`, { user: record.user, impersonated_by: record.impersonated_by, cert_fingerprint_sha256: fingerprint, expires_at: record.expires_at });
    await this.deleteLongEnded(record.user, now);
    return { record, token };
  }

  /**
   * Each login makes a record: the user's sessions that ended over a day ago go at its next
   * login, so the store holds about a day of any user's sessions. A failed delete waits for the next.
   */
  private async deleteLongEnded(user: string, nowMs: number): Promise<void> {
    const ended = this.state.userSessions.values().filter((s) => s.user === user && endedAt(s) < nowMs - ENDED_RETENTION_MS);
    await Promise.all(ended.map((s) => this.repos.userSessions.delete(s.id).catch(() => false)));
  }

  /**
   * Sessions by id. With no `user`: the caller's own (as a user, or those it created as a
   * certificate), or everyone's with access:session:list:any. Another user's: needs that
   * permission, except for the sessions the calling certificate created.
   */
  list(ctx: CallContext, request: { user: string; includeInactive: boolean; pageSize: number; pageToken: string }): { sessions: UserSessionRecord[]; nextPageToken: string } {
    const caller = this.caller(ctx);
    const user = request.user === '' ? undefined : userPrincipalOf(request.user, 'user');
    // `:any` is checked per user: a role scoped to some users lists only theirs.
    const any = (of: string) => this.state.allows(caller, crossPrincipal(LIST), ownerResources(of));
    if (user !== undefined && user !== caller.id && !any(user) && caller.delegation !== undefined) {
      throw new RpcError('PERMISSION_DENIED', `permission denied: listing the sessions of ${user} requires ${crossPrincipal(LIST)}`);
    }
    const now = Date.now();
    const sessions = this.state.userSessions
      .values()
      .filter((s) => (user === undefined || s.user === user) && (request.includeInactive || isLive(s, now)) && (this.isOwnOrCreated(caller, s) || any(s.user)))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const page = pageByKey(sessions, (s) => s.id, request);
    return { sessions: page.items, nextPageToken: page.nextPageToken };
  }

  /**
   * Revokes one session, or with only `user` every live session of that user the caller may
   * revoke. Returns how many this call revoked (an already revoked or expired one is not counted).
   */
  async revoke(ctx: CallContext, request: { sessionId: string; user: string }): Promise<number> {
    const user = request.user === '' ? undefined : userPrincipalOf(request.user, 'user');
    if (request.sessionId !== '') {
      if (!USER_SESSION_TOKENS.isId(request.sessionId)) throw new InvalidArgumentError('session_id', 'must be a session id (16 lowercase hex digits), not a token');
      return this.revokeOne(ctx, request.sessionId, user);
    }
    if (user === undefined) throw new InvalidArgumentError('session_id', 'give session_id, or user to revoke all of its sessions');
    return this.revokeAllOf(ctx, user);
  }

  private mayRevoke(caller: Principal, session: UserSessionRecord): boolean {
    return this.isOwnOrCreated(caller, session) || this.state.allows(caller, crossPrincipal(REVOKE), ownerResources(session.user));
  }

  private async revokeOne(ctx: CallContext, id: string, user: string | undefined): Promise<number> {
    const caller = this.caller(ctx);
    const revoked = await retryOnConflict(async () => {
      const found = await this.repos.userSessions.get(id);
      // One answer for "absent", "another user's" and "not yours": session ids cannot be probed.
      if (!found || (user !== undefined && found.value.user !== user) || !this.mayRevoke(caller, found.value)) throw new NotFoundError(`user session ${id} not found`);
      return this.revokeRecord(found.value, found.modRevision);
    });
    this.security(ctx, revoked ? 'user session revoked' : 'user session revoke: already revoked or expired', `user_session:${id}`, { revoked: revoked ? 1 : 0 });
    return revoked ? 1 : 0;
  }

  /** Read from the store, not the cache: a session just created on another daemon is revoked too. */
  private async revokeAllOf(ctx: CallContext, user: string): Promise<number> {
    const caller = this.caller(ctx);
    if (user !== caller.id && caller.delegation !== undefined && !this.state.allows(caller, crossPrincipal(REVOKE), ownerResources(user))) {
      throw new RpcError('PERMISSION_DENIED', `permission denied: revoking the sessions of ${user} requires ${crossPrincipal(REVOKE)}`);
    }
    const ids: string[] = [];
    for (const { value } of await this.repos.userSessions.all()) {
      if (value.user !== user || !this.mayRevoke(caller, value)) continue;
      const revoked = await retryOnConflict(async () => {
        const found = await this.repos.userSessions.get(value.id);
        return found !== undefined && (await this.revokeRecord(found.value, found.modRevision));
      });
      if (revoked) ids.push(value.id);
    }
    this.security(ctx, 'user sessions revoked', user, { revoked: ids.length, session_ids: ids });
    return ids.length;
  }

  /** Marks a live session revoked (compare-and-swap); false if it already was revoked or expired. */
  private async revokeRecord(session: UserSessionRecord, modRevision: number): Promise<boolean> {
    const now = Date.now();
    if (!isLive(session, now)) return false;
    const next: UserSessionRecord = { ...session, revoked_at: new Date(now).toISOString() };
    const stored = await this.repos.userSessions.update(session.id, next, modRevision);
    this.state.userSessions.remember(session.id, next, stored.modRevision);
    return true;
  }
}
