// Step 3: establishes who is calling. Only a verified client certificate (and, with
// the chain issue, an API key) can name a principal; headers never can.
import type { Logger } from 'pino';
import { UnauthenticatedError } from '../server/errors.js';
import type { CertificateAuthenticator } from '../authn/x509.js';
import { isExempt } from './exempt.js';
import { stepInterceptor } from './step.js';

/** Headers a client must not be able to set: stripped before any handler sees the call. */
const INTERNAL_HEADER_PREFIX = 'x-debvisor-';

export function identity(certificates: CertificateAuthenticator, log: Logger) {
  return stepInterceptor({
    onRequest: (state, { path, call, metadata }) => {
      for (const key of Object.keys(metadata.getMap())) {
        if (key.startsWith(INTERNAL_HEADER_PREFIX)) metadata.remove(key);
      }
      if (isExempt(path)) return;
      const peer = call.getAuthContext().sslPeerCertificate;
      try {
        // grpc-js exposes a peer certificate only when TLS verified it against the CA bundle,
        // so an unverifiable certificate arrives here as none at all.
        if (!peer) throw new UnauthenticatedError('no verified client certificate (none presented, or it failed TLS verification) and no API key');
        state.principal = certificates.authenticate(peer);
      } catch (err) {
        if (err instanceof UnauthenticatedError) {
          log.warn({ trace_id: state.traceId, peer: state.peer, method: path, reason: err.reason }, 'authentication failed');
        }
        throw err;
      }
    },
  });
}
