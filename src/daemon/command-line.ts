// debvisor-rpcd's command line, shared by the daemon (src/daemon/run.ts) and its generated
// man page (src/dev/manpages.ts).
import { Command, Option } from 'commander';
import { DEFAULT_CONFIG_PATH, ENV_PREFIX } from '../config/load.js';
import { VERSION } from '../version.js';

export const DAEMON_DESCRIPTION = 'DebVisor control-plane daemon: gRPC over mutual TLS on every hypervisor host.';

export interface ServeOptions {
  readonly config?: string;
  readonly checkConfig?: boolean;
  readonly enableTestService?: boolean;
}

export interface RestoreOptions {
  readonly from: string;
  readonly dataDir?: string;
  readonly force?: boolean;
  readonly verifyOnly?: boolean;
  readonly etcdSnapshotOut?: string;
}

/** What the commands do; without them the program only describes itself (the man page). */
export interface DaemonActions {
  serve(options: ServeOptions): Promise<void>;
  restore(options: RestoreOptions): Promise<void>;
}

/** The daemon's command line, not yet parsed: serving (no command) and the offline restore. */
export function daemonProgram(actions?: DaemonActions): Command {
  const program = new Command('debvisor-rpcd')
    .description(DAEMON_DESCRIPTION)
    .version(VERSION)
    .option('-c, --config <path>', `YAML config file (default: ${DEFAULT_CONFIG_PATH} if it exists)`)
    .option('--check-config', 'validate the configuration, print a summary and exit')
    .addOption(new Option('--enable-test-service', 'register debvisor.testing.v1 (tests only)').hideHelp())
    .addHelpText(
      'after',
      `\nEvery setting can be overridden by environment: ${ENV_PREFIX}<KEY_PATH>, e.g.\n` +
        `  ${ENV_PREFIX}SERVER_LISTEN=0.0.0.0:7443  ${ENV_PREFIX}LOG_LEVEL=debug\n` +
        'Lists take comma-separated values. Signals: SIGTERM/SIGINT drain and exit, SIGHUP reloads the config, certificates and CRL.',
    );
  const restore = program
    .command('restore')
    .description('restore a store backup made by `debvisorctl store backup`, offline (the daemon must be stopped)')
    .requiredOption('--from <file>', 'the backup file; its size and SHA-256 are checked first')
    .option('--data-dir <dir>', 'embedded store: the directory to restore into (store.embedded.dir)')
    .option('--force', 'replace the store of a directory that already holds files')
    .option('--verify-only', 'only check the backup file, change nothing')
    .option('--etcd-snapshot-out <file>', 'etcd store: write the etcd snapshot for `etcdctl snapshot restore`')
    .addHelpText(
      'after',
      '\nExit status: 0 done, 1 the backup or the directory was refused (the message says why), 2 usage error.\n' +
        'See /usr/share/doc/debvisor-rpcd/runbooks/backup-and-restore.md.',
    );
  if (actions) {
    program.action((options: ServeOptions) => actions.serve(options));
    restore.action((options: RestoreOptions) => actions.restore(options));
  }
  return program;
}
