// debvisorctl's commands. The entry is src/cli/debvisorctl.ts; the man page and the bash
// completion are generated from debvisorctlProgram() (src/dev/manpages.ts).
import { Command, Option } from 'commander';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { AccessService, PrincipalKind, WhoAmIResponseSchema, type WhoAmIResponse } from '../gen/debvisor/v1/access_pb.js';
import { VERSION } from '../version.js';
import { collect, withService } from './command.js';
import { registerAccessCommands } from './access.js';
import { registerAccessBlockCommands } from './access-blocks.js';
import { registerAuditCommands } from './audit.js';
import { registerPkiCommands } from './pki.js';
import { registerEventCommands } from './events.js';
import { registerOperationCommands } from './operation.js';
import { registerVmCommands } from './vm.js';
import { registerNodeCommands } from './node.js';
import { registerStorageCommands } from './storage.js';
import { registerImageCommands } from './image.js';
import { registerMigrationCommands } from './migration.js';
import { registerStoreCommands } from './store.js';
import { registerSessionCommands } from './session.js';
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

/** The whole command tree, not yet parsed. */
export function debvisorctlProgram(): Command {
  const program = new Command('debvisorctl')
    .description('Command line for the DebVisor control-plane daemon (debvisor-rpcd).')
    .version(VERSION)
    .option('-s, --server <host:port>', 'daemon address (env DEBVISORCTL_SERVER)', undefined)
    .option('--ca <file>', 'CA bundle that signed the daemon certificate (env DEBVISORCTL_CA)')
    .option('--cert <file>', 'client certificate (env DEBVISORCTL_CERT)')
    .option('--key <file>', 'client private key (env DEBVISORCTL_KEY)')
    .option('--api-key <token>', 'API key instead of a client certificate (env DEBVISORCTL_API_KEY)')
    .option('--as <user>', 'act for this user (impersonation; the certificate needs access:impersonate)')
    .option('--as-group <group>', "the user's group, repeatable (with --as)", collect)
    .option('--as-reason <text>', 'why, recorded in the audit log (with --as)')
    .option('--as-session <token>', 'user session token, where the daemon requires one (with --as; env DEBVISORCTL_AS_SESSION)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['text', 'json']).default('text'))
    .option('--timeout <seconds>', 'call deadline', '30')
    .addHelpText(
      'after',
      '\nWithout flags, credentials come from the environment, then the dev PKI when run from a\n' +
        'checkout after ./scripts/dev, then /etc/debvisor/rpc/{ca-cert,client-cert,client-key}.pem.\n' +
        'Credential flags replace the environment\'s: --api-key is not joined by DEBVISORCTL_CERT.\n' +
        'Prefer DEBVISORCTL_AS_SESSION to --as-session: a flag shows in ps and shell history.',
    );

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

  registerAccessCommands(program);
  registerAccessBlockCommands(program);
  registerSessionCommands(program);
  registerAuditCommands(program);
  registerPkiCommands(program);
  registerOperationCommands(program);
  registerEventCommands(program);
  registerVmCommands(program);
  registerNodeCommands(program);
  registerStorageCommands(program);
  registerImageCommands(program);
  registerMigrationCommands(program);
  registerStoreCommands(program);
  return program;
}

export async function runDebvisorctl(): Promise<void> {
  // grpc-js sends the address as TLS SNI even when it is an IP; Node warns about it
  // (DEP0123) on every run. Certificate checks still use the IP SAN, so hide only that one.
  process.removeAllListeners('warning');
  process.on('warning', (warning: NodeJS.ErrnoException) => {
    if (warning.code !== 'DEP0123') process.stderr.write(`${warning.name}: ${warning.message}\n`);
  });
  await debvisorctlProgram().parseAsync();
}
