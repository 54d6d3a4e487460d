// AccessService. WhoAmI is served here; key, role and quota management land with the chain issue.
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { PrincipalKind, type AccessService } from '../gen/debvisor/v1/access_pb.js';
import type { HandlersOf } from '../server/adapter.js';
import { UnauthenticatedError } from '../server/errors.js';

export function accessHandlers(): Partial<HandlersOf<typeof AccessService>> {
  return {
    whoAmI: (_request, ctx) => {
      const principal = ctx.principal;
      // The identity step guarantees a principal; this guards against a chain misconfiguration.
      if (!principal) return Promise.reject(new UnauthenticatedError('no principal on call'));
      const certificate = principal.certificate;
      return Promise.resolve({
        principalId: principal.id,
        kind: principal.kind === 'certificate' ? PrincipalKind.CERTIFICATE : PrincipalKind.API_KEY,
        authMethod: principal.kind === 'certificate' ? 'mtls' : 'api_key',
        certFingerprintSha256: certificate ? certificate.fingerprintSha256.replaceAll(':', '').toLowerCase() : '',
        certNotAfter: certificate ? timestampFromDate(certificate.notAfter) : undefined,
        apiKeyId: principal.apiKeyId ?? '',
        sourceAddress: ctx.peer,
      });
    },
  };
}
