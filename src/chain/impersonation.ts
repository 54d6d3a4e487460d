// Step 3b (after identity): a client certificate acting for one of its users. The
// impersonate-user, impersonate-group, impersonate-reason and impersonate-session headers
// are honoured only for a caller whose verified certificate holds `access:impersonate` for
// that user (a role's USER resource globs may restrict which users); an API key never
// impersonates. A header the caller is not entitled to use refuses the call: it is never
// ignored, and the call never falls back to the caller's own identity. The call then runs
// as `user:<name>`, with the rights of the user and its groups intersected with the
// certificate's (the RBAC step and AccessState check both sides), quotas and rate limits
// charged to the user, and every audit record naming both.
import type { AuditLog } from '../audit/log.js';
import { auditPrincipal } from '../audit/principal.js';
import { authorize } from '../authz/decide.js';
import type { Role } from '../authz/roles.js';
import type { Metrics } from '../observability/metrics.js';
import type { CallState } from '../rpc/context.js';
import { InvalidArgumentError, RpcError, UnauthenticatedError } from '../rpc/errors.js';
import { GROUP_PREFIX, headerValues, IMPERSONATE_PERMISSION, IMPERSONATION_HEADERS, impersonationProblem, USER_PREFIX } from '../rpc/impersonation-names.js';
import type { Delegation, Principal } from '../rpc/principal.js';
import type { Step, StepCall } from './step.js';

/** The config's `auth.impersonation` section, read per call (SIGHUP may change it). */
export interface ImpersonationSettings {
  readonly enabled: boolean;
  readonly require_session: boolean;
}

/** Checks a session token for the user and the certificate acting for it; returns the session id or throws UnauthenticatedError. */
export type SessionVerifier = (token: string, expect: { readonly user: string; readonly certFingerprint: string }, nowMs: number) => string;

export interface ImpersonationDeps {
  readonly settings: () => ImpersonationSettings;
  readonly roleNamesOf: (principal: string) => readonly string[];
  readonly roleNamesOfPrincipal: (principal: Principal) => readonly string[];
  readonly roles: (names: readonly string[]) => readonly Role[];
  readonly isBootstrapAdmin: (principal: string) => boolean;
  readonly verifySession: SessionVerifier;
  readonly audit: AuditLog;
  readonly metrics: Metrics;
  /** Methods an impersonated call may make without a session even when sessions are required (CreateUserSession). */
  readonly sessionlessMethods: ReadonlySet<string>;
}

/** What the impersonation headers of one call say (validated). */
interface Claim {
  readonly user: string;
  readonly groups: readonly string[];
  readonly reason: string | undefined;
  readonly sessionToken: string | undefined;
}

/** The string values of a header (grpc-js keeps repeated headers as separate values). */
function values(call: StepCall, name: string): string[] {
  return call.metadata.get(name).filter((value): value is string => typeof value === 'string');
}

const HEADER_NAMES = Object.values(IMPERSONATION_HEADERS);

/** The impersonation headers of the call, removed from its metadata; undefined when it has none. */
function claimOf(call: StepCall): Claim | undefined {
  const metadata = call.metadata;
  // The common case, no impersonation: one map lookup per header name, nothing else.
  if (HEADER_NAMES.every((name) => metadata.get(name).length === 0)) return undefined;
  const user = values(call, IMPERSONATION_HEADERS.user);
  const groups = values(call, IMPERSONATION_HEADERS.group);
  const reason = values(call, IMPERSONATION_HEADERS.reason);
  const session = values(call, IMPERSONATION_HEADERS.session);
  for (const name of HEADER_NAMES) metadata.remove(name);
  if (user.length > 1) throw new InvalidArgumentError(IMPERSONATION_HEADERS.user, 'must be given once');
  if (reason.length > 1) throw new InvalidArgumentError(IMPERSONATION_HEADERS.reason, 'must be given at most once');
  if (session.length > 1) throw new InvalidArgumentError(IMPERSONATION_HEADERS.session, 'must be given at most once');
  // HTTP/2 peers join a repeated header into one "a, b" value.
  const groupNames = [...new Set(headerValues(groups))].sort();
  const problem = impersonationProblem({ user: user[0], groups: groupNames, reason: reason[0], session: session[0] });
  if (problem) throw new InvalidArgumentError(problem.header, problem.problem);
  return { user: user[0] ?? '', groups: groupNames.map((name) => `${GROUP_PREFIX}${name}`), reason: reason[0], sessionToken: session[0] };
}

export function impersonation(deps: ImpersonationDeps): Step {
  // One principal object per certificate principal and claim, so the per-principal caches
  // (audit record text, role lists) work for users as they do for certificates.
  const users = new WeakMap<Principal, Map<string, Principal>>();
  /** (certificate, user) pairs whose first impersonated call was recorded as a SECURITY event. */
  const seenPairs = new Set<string>();

  const userPrincipal = (by: Principal, claim: Claim, sessionId: string | undefined): Principal => {
    let byClaim = users.get(by);
    if (!byClaim) users.set(by, (byClaim = new Map<string, Principal>()));
    const key = `${claim.user}\0${claim.groups.join(',')}\0${claim.reason ?? ''}\0${sessionId ?? ''}`;
    let user = byClaim.get(key);
    if (!user) {
      const delegation: Delegation = {
        by,
        groups: Object.freeze([...claim.groups]),
        ...(claim.reason !== undefined ? { reason: claim.reason } : {}),
        ...(sessionId !== undefined ? { sessionId } : {}),
      };
      user = Object.freeze({ id: `${USER_PREFIX}${claim.user}`, kind: 'user' as const, delegation: Object.freeze(delegation) });
      if (byClaim.size >= 1000) byClaim.clear();
      byClaim.set(key, user);
    }
    return user;
  };

  const refuse = (state: CallState, path: string, caller: Principal, reason: string, error: RpcError, type: 'AUTHZ_DENIED' | 'SUSPICIOUS' | 'AUTH_FAILED' = 'AUTHZ_DENIED'): never => {
    state.decision = 'deny';
    deps.audit.write({
      type,
      trace_id: state.traceId,
      principal: auditPrincipal(caller, state.roles ?? []),
      source: state.peer,
      method: path,
      decision: 'deny',
      reason,
    });
    throw error;
  };

  return {
    onRequest: (state, call) => {
      const caller = state.principal;
      if (!caller) return;
      let claim: Claim | undefined;
      try {
        claim = claimOf(call);
      } catch (err) {
        if (err instanceof InvalidArgumentError && caller.kind !== 'certificate') {
          // Still an impersonation attempt over a key: that is what the record says.
          refuse(state, call.path, caller, 'impersonation headers over an API key', new RpcError('PERMISSION_DENIED', 'permission denied: API keys cannot impersonate'), 'SUSPICIOUS');
        }
        throw err;
      }
      if (!claim) return;
      const path = call.path;
      const certificate = caller.certificate;
      if (caller.kind !== 'certificate' || !certificate) {
        return refuse(state, path, caller, `impersonation of user:${claim.user} attempted over an API key`, new RpcError('PERMISSION_DENIED', 'permission denied: API keys cannot impersonate'), 'SUSPICIOUS');
      }
      if (!deps.settings().enabled) {
        refuse(state, path, caller, 'impersonation is disabled (auth.impersonation.enabled)', new RpcError('PERMISSION_DENIED', 'permission denied: impersonation is disabled on this daemon'));
      }
      const callerRoles = state.roles ?? deps.roleNamesOf(caller.id);
      const allowed = authorize({
        roles: deps.roles(callerRoles),
        required: IMPERSONATE_PERMISSION,
        exemptFromDeny: deps.isBootstrapAdmin(caller.id),
        resources: [{ kind: 'user', name: claim.user }],
      });
      if (!allowed.allowed) {
        deps.metrics.authzDenials.inc({ principal: deps.metrics.principalLabel(caller.id), permission: IMPERSONATE_PERMISSION });
        refuse(
          state,
          path,
          caller,
          `impersonating user:${claim.user} needs ${IMPERSONATE_PERMISSION} for that user (${allowed.reason})`,
          new RpcError('PERMISSION_DENIED', `permission denied: acting for user ${claim.user} requires ${IMPERSONATE_PERMISSION}`),
        );
      }
      let sessionId: string | undefined;
      const settings = deps.settings();
      if (claim.sessionToken !== undefined) {
        try {
          sessionId = deps.verifySession(claim.sessionToken, { user: `${USER_PREFIX}${claim.user}`, certFingerprint: certificate.fingerprintSha256 }, Date.now());
        } catch (err) {
          if (!(err instanceof UnauthenticatedError)) throw err;
          deps.metrics.authAttempts.inc({ method: 'user_session', result: 'failure' });
          refuse(state, path, caller, `user session for user:${claim.user}: ${err.reason}`, new UnauthenticatedError('the impersonate-session token is not valid for this user and certificate'), 'AUTH_FAILED');
        }
      } else if (settings.require_session && !deps.sessionlessMethods.has(path)) {
        refuse(state, path, caller, `impersonation of user:${claim.user} without a session (auth.impersonation.require_session)`, new UnauthenticatedError('an impersonate-session token is required to act for a user'), 'AUTH_FAILED');
      }
      const user = userPrincipal(caller, claim, sessionId);
      state.principal = user;
      state.impersonatorRoles = callerRoles;
      state.roles = deps.roleNamesOfPrincipal(user);
      const pair = `${certificate.fingerprintSha256}\0${user.id}`;
      if (!seenPairs.has(pair)) {
        if (seenPairs.size >= 10_000) seenPairs.clear();
        seenPairs.add(pair);
        deps.audit.write({
          type: 'SECURITY',
          trace_id: state.traceId,
          principal: auditPrincipal(user, state.roles, callerRoles),
          source: state.peer,
          method: path,
          object: user.id,
          reason: `${caller.id} acts for ${user.id} (first impersonated call since the daemon started)`,
        });
      }
    },
  };
}
