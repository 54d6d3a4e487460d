// debvisor-rpcd's command line, shared by the daemon (src/daemon/run.ts) and its generated
// man page (src/dev/manpages.ts).
import { Command, Option } from 'commander';
import { DEFAULT_CONFIG_PATH, ENV_PREFIX } from '../config/load.js';
import { VERSION } from '../version.js';

export const DAEMON_DESCRIPTION = 'DebVisor control-plane daemon: gRPC over mutual TLS on every hypervisor host.';

/** The daemon's options, not yet parsed. */
export function daemonProgram(): Command {
  return new Command('debvisor-rpcd')
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
}
