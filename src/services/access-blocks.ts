// AccessService.ListBlocks and Unblock: this daemon's authentication-failure blocks
// (src/authn/source-guard.ts). Lifting one is audited as SECURITY.
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { isIP } from 'node:net';
import { BlockKind, type AccessService, type AuthBlockSchema } from '../gen/debvisor/v1/access_pb.js';
import type { AuditLog } from '../audit/log.js';
import type { Block, SourceGuard } from '../authn/source-guard.js';
import { auditPrincipal } from '../audit/principal.js';
import type { HandlersOf } from '../rpc/adapter.js';
import { InvalidArgumentError, UnauthenticatedError } from '../rpc/errors.js';

/** API key ids as src/authn/apikey-token.ts makes them. */
const KEY_ID = /^[0-9a-f]{16}$/;

export type BlockHandlers = Pick<HandlersOf<typeof AccessService>, 'listBlocks' | 'unblock'>;

export interface BlockHandlerDeps {
  readonly guard: SourceGuard;
  readonly audit: AuditLog;
  readonly roleNamesOf: (principal: string) => readonly string[];
}

function blockMessage(block: Block): MessageInitShape<typeof AuthBlockSchema> {
  return {
    kind: block.kind === 'address' ? BlockKind.ADDRESS : BlockKind.API_KEY,
    subject: block.subject,
    createTime: timestampFromMs(block.since),
    expireTime: timestampFromMs(block.until),
    failures: block.failures,
  };
}

export function blockHandlers({ guard, audit, roleNamesOf }: BlockHandlerDeps): BlockHandlers {
  return {
    listBlocks: () => Promise.resolve({ blocks: guard.list().map(blockMessage) }),
    unblock: (request, ctx) => {
      const subject = request.subject.trim();
      if (isIP(subject) === 0 && !KEY_ID.test(subject)) throw new InvalidArgumentError('subject', 'must be an IP address or an API key id (16 hex digits)');
      if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
      const lifted = guard.unblock(subject);
      audit.write({
        type: 'SECURITY',
        trace_id: ctx.traceId,
        principal: auditPrincipal(ctx.principal, roleNamesOf(ctx.principal.id)),
        source: ctx.peer,
        object: subject,
        reason: lifted.length > 0 ? `authentication block on ${subject} lifted` : `no active authentication block on ${subject}; its failures forgotten`,
        details: { lifted: lifted.map((block) => ({ kind: block.kind, subject: block.subject, until: new Date(block.until).toISOString() })) },
      });
      return Promise.resolve({ lifted: lifted.map(blockMessage) });
    },
  };
}
