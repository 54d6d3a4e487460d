// Step 3: who is calling. A verified client certificate decides; without one, an
// API key. Headers never name a principal. Failures are generic to the client,
// precise in the audit log, and counted per source address (and per key id for a
// known key with a wrong secret). Blocks refuse API-key and anonymous calls only:
// a call whose certificate verifies never sees them.
import { TLSSocket, type PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import type { AuditLog } from '../audit/log.js';
import { WrongSecretError, type ApiKeyAuthenticator } from '../authn/apikey.js';
import { parseToken, tokenFromHeaders } from '../authn/apikey-token.js';
import type { Principal } from '../rpc/principal.js';
import type { SourceGuard } from '../authn/source-guard.js';
import type { CertificateAuthenticator } from '../authn/x509.js';
import type { Metrics } from '../observability/metrics.js';
import type { CallState } from '../rpc/context.js';
import { UnauthenticatedError } from '../rpc/errors.js';
import { auditPrincipal } from '../audit/principal.js';
import { firstHeader, headerNames } from './headers.js';
import type { Connection } from './peer.js';
import type { Step } from './step.js';

/** Headers a client must not be able to set or have forwarded: stripped before any handler sees the call. */
const INTERNAL_HEADER_PREFIX = 'x-debvisor-';
const CREDENTIAL_HEADERS = ['authorization', 'x-api-key'];

export interface IdentityDeps {
  readonly certificates: CertificateAuthenticator;
  readonly apiKeys: ApiKeyAuthenticator;
  readonly guard: SourceGuard;
  readonly audit: AuditLog;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly roleNamesOf: (principal: string) => readonly string[];
}

/**
 * Why TLS refused the certificate the peer presented, for the audit reason: grpc-js
 * hides unverified certificates from getAuthContext(), so this asks the connection's socket
 * (undefined if grpc-js internals change or no certificate was presented). The text is
 * the peer's own claim and goes only to the audit log.
 */
function tlsRefusal(connection: Connection): string | undefined {
  try {
    const socket = connection.session?.socket;
    if (!(socket instanceof TLSSocket) || socket.authorized) return undefined;
    // An empty object when the peer presented no certificate (the typings say otherwise).
    const peer = socket.getPeerCertificate() as Partial<PeerCertificate>;
    if (!peer.raw) return undefined;
    const error: unknown = socket.authorizationError;
    const why = error instanceof Error ? ((error as NodeJS.ErrnoException).code ?? error.message) : String(error);
    const cn = peer.subject?.CN;
    const names = [cn ? `CN=${String(cn)}` : '', peer.subjectaltname ?? ''].filter((n) => n !== '').join(', ');
    return `certificate (${names.slice(0, 300)}, serial ${peer.serialNumber ?? '?'}) failed TLS verification: ${why}`;
  } catch {
    return undefined;
  }
}

export function identity(deps: IdentityDeps): Step {
  const authSucceeded = {
    mtls: deps.metrics.authAttempts.cell({ method: 'mtls', result: 'success' }),
    apiKey: deps.metrics.authAttempts.cell({ method: 'api_key', result: 'success' }),
  };
  const fail = (state: CallState, path: string, ip: string, method: string, err: UnauthenticatedError): never => {
    deps.metrics.authAttempts.inc({ method, result: 'failure' });
    deps.audit.write({ type: 'AUTH_FAILED', trace_id: state.traceId, source: state.peer, method: path, decision: 'deny', reason: err.reason });
    for (const block of deps.guard.recordFailure(ip, err instanceof WrongSecretError ? err.keyId : undefined)) {
      const what = block.kind === 'address' ? `from ${ip}` : `for API key ${block.subject} (from ${ip})`;
      deps.audit.write({ type: 'SUSPICIOUS', trace_id: state.traceId, source: state.peer, reason: `too many authentication failures ${what}; blocked` });
      deps.log.warn(
        block.kind === 'address' ? { source: ip } : { key_id: block.subject, source: ip },
        `${block.kind === 'address' ? 'source address' : 'API key id'} blocked after repeated authentication failures`,
      );
    }
    throw err;
  };
  /** Refuses an API-key or anonymous call while its address or key id is blocked. */
  const refuseIfBlocked = (state: CallState, path: string, ip: string, token: string | undefined): void => {
    let reason: string | undefined;
    if (deps.guard.addressBlockedFor(ip) > 0) {
      reason = 'source address is blocked';
    } else if (token !== undefined && deps.guard.anyKeyBlocked) {
      const keyId = parseToken(token)?.keyId;
      if (keyId !== undefined && deps.guard.keyBlockedFor(keyId) > 0) reason = `API key ${keyId} is blocked`;
    }
    if (reason === undefined) return;
    // Not counted again: a blocked address or key must not extend its own block by retrying.
    deps.metrics.authAttempts.inc({ method: 'blocked', result: 'failure' });
    deps.audit.write({ type: 'AUTH_FAILED', trace_id: state.traceId, source: state.peer, method: path, decision: 'deny', reason });
    throw new UnauthenticatedError(reason);
  };

  return {
    onRequest: (state, { path, connection, metadata }) => {
      const token = tokenFromHeaders(firstHeader(metadata, 'authorization'), firstHeader(metadata, 'x-api-key'));
      for (const name of headerNames(metadata)) {
        if (name.startsWith(INTERNAL_HEADER_PREFIX) || CREDENTIAL_HEADERS.includes(name)) metadata.remove(name);
      }
      const ip = connection.ip;
      // grpc-js exposes a peer certificate only when TLS verified it against the CA bundle,
      // so an unverifiable certificate arrives here as none at all.
      const peer = connection.certificate;
      if (!peer) refuseIfBlocked(state, path, ip, token);
      let principal: Principal;
      const method = peer ? 'mtls' : token !== undefined ? 'api_key' : 'none';
      try {
        if (peer) {
          // With both credentials, the certificate decides and the key is ignored.
          principal = deps.certificates.authenticate(peer);
        } else if (token !== undefined) {
          principal = deps.apiKeys.authenticate(token, ip, Date.now(), connection.session);
        } else {
          const refusal = tlsRefusal(connection);
          throw new UnauthenticatedError(
            refusal === undefined
              ? 'no verified client certificate (none presented, or it failed TLS verification) and no API key'
              : `no verified client certificate: the ${refusal}; and no API key`,
          );
        }
      } catch (err) {
        if (err instanceof UnauthenticatedError) fail(state, path, ip, method, err);
        throw err;
      }
      (method === 'mtls' ? authSucceeded.mtls : authSucceeded.apiKey).inc();
      state.principal = principal;
      state.roles = deps.roleNamesOf(principal.id);
      if (deps.guard.noteSource(principal.id, ip)) {
        deps.audit.write({
          type: 'SUSPICIOUS',
          trace_id: state.traceId,
          principal: auditPrincipal(principal, state.roles),
          source: state.peer,
          method: path,
          reason: `new source address ${ip} for ${principal.id}`,
        });
      }
    },
  };
}
