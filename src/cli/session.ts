// debvisorctl session create | list | revoke: user sessions, for certificates that act for
// users (impersonation). `session create` acts for the user named by the global --as.
import type { Command } from 'commander';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { AccessService, CreateUserSessionResponseSchema, ListUserSessionsResponseSchema, RevokeUserSessionResponseSchema, type UserSession } from '../gen/debvisor/v1/access_pb.js';
import { duration, lifeState, when, withService } from './command.js';
import { UsageError } from './exit-codes.js';
import { fail, printJson, printRecord, printTable } from './output.js';

function sessionRecord(session: UserSession | undefined): Record<string, string> {
  return {
    id: session?.id ?? '',
    user: session?.user ?? '',
    'impersonated by': session?.impersonatedBy ?? '',
    'certificate sha256': session?.certFingerprintSha256 ?? '',
    created: when(session?.createTime),
    expires: when(session?.expireTime),
  };
}

export function registerSessionCommands(program: Command): void {
  const withAccess = withService(program, AccessService);
  const session = program.command('session').description('user sessions of certificates acting for users (impersonation)');
  session
    .command('create')
    .description('create a session for the user given with the global --as (needs access:impersonate); its token is shown once')
    .option('--ttl <duration>', 'lifetime, e.g. 8h (default: auth.impersonation.session_ttl_seconds, 12 h)', duration)
    .hook('preAction', () => {
      // The global --as is what makes the call act for a user; without it the daemon refuses.
      if (!program.opts<{ as?: string }>().as) fail(new UsageError('session create acts for a user: give the global --as <user> (and --as-group <group> for its groups)'));
    })
    .action(
      withAccess(async ({ client, options, flags }, opts: { ttl?: number }) => {
        const response = await client.createUserSession(opts.ttl ? { ttl: durationFromMs(opts.ttl) } : {}, options);
        if (flags.output === 'json') { printJson(CreateUserSessionResponseSchema, response); return; }
        printRecord(sessionRecord(response.session));
        process.stdout.write(`\ntoken for the impersonate-session header (shown once; store it now): ${response.token}\n`);
      }),
    );
  session
    .command('list')
    .description('list user sessions: your own (or those your certificate created); all with access:session:list:any')
    .option('--user <name>', 'sessions of this user (its name, without "user:")')
    .option('-a, --all', 'include revoked and expired sessions')
    .action(
      withAccess(async ({ client, options, flags }, opts: { user?: string; all?: boolean }) => {
        const response = await client.listUserSessions({ user: opts.user ?? '', includeInactive: opts.all ?? false, pageSize: 1000 }, options);
        if (flags.output === 'json') { printJson(ListUserSessionsResponseSchema, response); return; }
        printTable(
          ['id', 'user', 'impersonated by', 'created', 'expires', 'state'],
          response.sessions.map((s) => [s.id, s.user, s.impersonatedBy, when(s.createTime), when(s.expireTime), lifeState(s)]),
        );
      }),
    );
  session
    .command('revoke [session-id]')
    .description('revoke a session at once, or with --user and no id every session of that user')
    .option('--user <name>', 'the user (its name, without "user:")')
    .hook('preAction', (command) => {
      if (!command.args[0] && !command.opts<{ user?: string }>().user) fail(new UsageError('give a session id, or --user <name> to revoke all of its sessions'));
    })
    .action(
      withAccess(async ({ client, options, flags }, sessionId: string | undefined, opts: { user?: string }) => {
        const response = await client.revokeUserSession({ sessionId: sessionId ?? '', user: opts.user ?? '' }, options);
        if (flags.output === 'json') { printJson(RevokeUserSessionResponseSchema, response); return; }
        process.stdout.write(`revoked ${response.revoked} session${response.revoked === 1 ? '' : 's'}\n`);
      }),
    );
}
