// debvisorctl whoami: the identity the daemon sees for these credentials.
import type { Command } from 'commander';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { AccessService, PrincipalKind, WhoAmIResponseSchema, type WhoAmIResponse } from '../gen/debvisor/v1/access_pb.js';
import { withService } from './command.js';
import { printJson, printRecord } from './output.js';

/** What `whoami` prints: the identity, and for an impersonated call who acts for it. */
export function whoAmIRecord(me: WhoAmIResponse): Record<string, string> {
  const by = me.impersonation;
  return {
    principal: me.principalId,
    kind: PrincipalKind[me.kind].toLowerCase(),
    'auth method': me.authMethod,
    ...(me.certFingerprintSha256 ? { 'certificate sha256': me.certFingerprintSha256 } : {}),
    ...(me.certNotAfter ? { 'certificate expires': timestampDate(me.certNotAfter).toISOString() } : {}),
    ...(me.apiKeyId ? { 'api key': me.apiKeyId } : {}),
    ...(me.roles.length ? { roles: me.roles.join(', ') } : {}),
    ...(by
      ? {
          ...(by.groups.length ? { groups: by.groups.join(', ') } : {}),
          'impersonated by': by.impersonatedBy,
          ...(by.impersonatorCertFingerprintSha256 ? { 'impersonator sha256': by.impersonatorCertFingerprintSha256 } : {}),
          ...(by.impersonatorRoles.length ? { 'impersonator roles': by.impersonatorRoles.join(', ') } : {}),
          ...(by.reason ? { reason: by.reason } : {}),
          ...(by.sessionId ? { session: by.sessionId } : {}),
        }
      : {}),
    'source address': me.sourceAddress,
  };
}

export function registerWhoAmICommand(program: Command): void {
  program
    .command('whoami')
    .description('show the identity the daemon sees for these credentials')
    .action(
      withService(program, AccessService)(async ({ client, options, flags }) => {
        const me = await client.whoAmI({}, options);
        if (flags.output === 'json') {
          printJson(WhoAmIResponseSchema, me);
          return;
        }
        printRecord(whoAmIRecord(me));
      }),
    );
}
