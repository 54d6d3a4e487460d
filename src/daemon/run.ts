// debvisor-rpcd's start-up, run by the entry src/main.ts once the Node version is checked.
import { ConfigError, ENV_PREFIX, loadConfig } from '../config/load.js';
import { routeGrpcLogs } from '../observability/grpc-logging.js';
import { createLogger } from '../observability/logger.js';
import { Daemon } from './server.js';
import { TlsConfigError } from '../pki/identity.js';
import { FilePermissionError, assertSafeFiles } from './file-permissions.js';
import { sdNotify } from './sd-notify.js';
import { VERSION } from '../version.js';
import { missingNodeFlags } from './node-flags.js';
import { daemonProgram, type ServeOptions } from './command-line.js';
import { runRestore } from './restore-command.js';

const EXIT_CONFIG = 2;
const EXIT_STARTUP = 1;

async function serve(options: ServeOptions): Promise<void> {
  // Two deliberate switches, so no production config or unit file turns it on by accident.
  if (options.enableTestService && process.env.DEBVISOR_ALLOW_TEST_SERVICE !== '1') {
    process.stderr.write('debvisor-rpcd: --enable-test-service also needs DEBVISOR_ALLOW_TEST_SERVICE=1 (tests only)\n');
    process.exit(EXIT_CONFIG);
  }

  let loaded;
  try {
    loaded = loadConfig({ path: options.config });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`debvisor-rpcd: invalid configuration:\n${err.problems.map((p) => `  ${p}`).join('\n')}\n`);
      process.exit(EXIT_CONFIG);
    }
    throw err;
  }
  const { config, file } = loaded;

  try {
    assertSafeFiles(config, file);
  } catch (err) {
    if (!(err instanceof FilePermissionError)) throw err;
    process.stderr.write(`debvisor-rpcd: refusing to start: unsafe file permissions:\n${err.problems.map((p) => `  ${p}`).join('\n')}\n`);
    process.exit(EXIT_CONFIG);
  }

  if (options.checkConfig) {
    process.stdout.write(`configuration OK (${file ?? 'built-in defaults'} + ${ENV_PREFIX}* environment)\n`);
    process.exit(0);
  }

  const log = createLogger(config.log.level);
  routeGrpcLogs(log);
  log.info({ version: VERSION, config_file: file ?? null, node: process.version }, 'starting');
  const missingFlags = missingNodeFlags();
  if (missingFlags.length > 0) log.warn({ missing: missingFlags }, 'node was started without the daemon\'s V8 flags (use bin/debvisor-rpcd or /usr/bin/debvisor-rpcd); memory use may be higher');

  let daemon: Daemon;
  try {
    daemon = await Daemon.start(config, log, { enableTestService: options.enableTestService === true });
  } catch (err) {
    const message = err instanceof TlsConfigError ? err.message : err instanceof Error ? err.message : String(err);
    log.fatal({ err }, `cannot start: ${message}`);
    process.stderr.write(`debvisor-rpcd: cannot start: ${message}\n`);
    process.exit(EXIT_STARTUP);
  }
  log.info({ grpc: config.server.listen, grpc_port: daemon.grpcPort, http: config.http.listen, http_port: daemon.httpPort }, 'ready');
  // Type=notify under systemd (see systemd/debvisor-rpcd.service); a no-op elsewhere.
  void sdNotify(['--ready', `--status=serving gRPC on ${config.server.listen}`], log);

  let stopping = false;
  const shutdown = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'draining in-flight calls');
    void sdNotify(['STOPPING=1', '--status=draining in-flight calls'], log);
    daemon.stop().then(
      ({ forced }) => {
        log.info({ forced }, 'stopped');
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  // systemctl reload. The process must never die on HUP.
  process.on('SIGHUP', () => {
    void daemon.reload(() => {
      const next = loadConfig({ path: options.config });
      assertSafeFiles(next.config, next.file);
      return next.config;
    });
  });
  // A stray rejection is a bug to fix, not a reason to drop every caller's connection.
  process.on('unhandledRejection', (reason) => {
    log.error({ err: reason }, 'unhandled promise rejection');
  });
  process.on('uncaughtException', (err) => {
    log.fatal({ err }, 'uncaught exception');
    process.exit(70);
  });
}

await daemonProgram({ serve, restore: runRestore }).parseAsync();
