// AccessService.CreateUserSession, ListUserSessions and RevokeUserSession: protobuf mapping
// over src/access/sessions.ts. request_id (exactly-once) is the adapter's: a replayed
// CreateUserSession gets the kept reply, whose token (a secret field) is cleared.
import { durationMs } from '@bufbuild/protobuf/wkt';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { AccessService, UserSessionSchema } from '../gen/debvisor/v1/access_pb.js';
import type { UserSessions } from '../access/sessions.js';
import type { HandlersOf } from '../rpc/adapter.js';
import type { UserSessionRecord } from '../store/records.js';
import { timestampOfIso } from './timestamp.js';

export type SessionHandlers = Pick<HandlersOf<typeof AccessService>, 'createUserSession' | 'listUserSessions' | 'revokeUserSession'>;


function sessionMessage(session: UserSessionRecord): MessageInitShape<typeof UserSessionSchema> {
  return {
    id: session.id,
    user: session.user,
    impersonatedBy: session.impersonated_by,
    certFingerprintSha256: session.cert_fingerprint_sha256,
    createTime: timestampOfIso(session.created_at),
    expireTime: timestampOfIso(session.expires_at),
    revokeTime: timestampOfIso(session.revoked_at),
  };
}

export function sessionHandlers(sessions: UserSessions): SessionHandlers {
  return {
    createUserSession: async (request, ctx) => {
      const { record, token } = await sessions.create(ctx, { ttlMs: request.ttl && durationMs(request.ttl) });
      return { session: sessionMessage(record), token };
    },
    listUserSessions: (request, ctx) => {
      const { sessions: found, nextPageToken } = sessions.list(ctx, {
        user: request.user,
        includeInactive: request.includeInactive,
        pageSize: request.pageSize,
        pageToken: request.pageToken,
      });
      return Promise.resolve({ sessions: found.map(sessionMessage), nextPageToken });
    },
    revokeUserSession: async (request, ctx) => ({ revoked: await sessions.revoke(ctx, { sessionId: request.sessionId, user: request.user }) }),
  };
}
