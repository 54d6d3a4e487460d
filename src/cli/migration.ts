// debvisorctl migration check|start|failover over MigrationService. A migration is started
// on the daemon of the node the VM runs on (the one debvisorctl talks to).
import type { Command } from 'commander';
import { MigrationService, PrepareMigrationResponseSchema } from '../gen/debvisor/v1/migration_pb.js';
import { bytes, count, withService } from './command.js';
import { waitAndExit, WAIT_HELP } from './operation.js';
import { printJson, printRecord } from './output.js';

export function registerMigrationCommands(program: Command): void {
  const withMigration = withService(program, MigrationService);
  const migration = program.command('migration').description('live migration and failover of VMs between nodes');

  migration
    .command('check')
    .description('say whether a VM on this node may be live-migrated to another node, and why not; exits 1 if not')
    .argument('<vm>', 'VM name')
    .requiredOption('--to <node>', 'target node (hostname)')
    .action(
      withMigration(async ({ client, options, flags }, vmName: string, opts: { to: string }) => {
        const response = await client.prepareMigration({ vmName, targetNode: opts.to }, options);
        if (flags.output === 'json') printJson(PrepareMigrationResponseSchema, response);
        else
          printRecord({
            allowed: String(response.allowed),
            reasons: response.reasons.join('; ') || '-',
            warnings: response.warnings.join('; ') || '-',
            'memory needed': bytes(response.requiredMemoryBytes),
            'target free memory': bytes(response.targetFreeMemoryBytes),
          });
        if (!response.allowed) process.exitCode = 1;
      }),
    );

  migration
    .command('start')
    .description('live-migrate a VM running on this node to another node, and follow the operation')
    .argument('<vm>', 'VM name')
    .requiredOption('--to <node>', 'target node (hostname)')
    .option('--compressed', 'compress migration traffic')
    .option('--bandwidth <MiB/s>', 'bandwidth limit in MiB/s (0: unlimited)', count, 0)
    .addHelpText('after', WAIT_HELP)
    .action(
      withMigration(async (call, vmName: string, opts: { to: string; compressed?: boolean; bandwidth: number }) => {
        const response = await call.client.migrateVM({ vmName, targetNode: opts.to, compressed: opts.compressed ?? false, bandwidthMibS: opts.bandwidth }, call.options);
        await waitAndExit(call, response.operation, `migration operation for ${vmName}`);
      }),
    );

  migration
    .command('failover')
    .description("start a failed node's VM on a healthy node (its disks must be shared RBD), and follow the operation")
    .argument('<vm>', 'VM name')
    .requiredOption('--from <node>', 'the failed node that ran the VM')
    .option('--to <node>', 'the node to start it on (default: the online node with the most free memory)')
    .addHelpText('after', WAIT_HELP)
    .action(
      withMigration(async (call, vmName: string, opts: { from: string; to?: string }) => {
        const response = await call.client.failoverVM({ vmName, failedNode: opts.from, targetNode: opts.to ?? '' }, call.options);
        await waitAndExit(call, response.operation, `failover operation for ${vmName}`);
      }),
    );
}
