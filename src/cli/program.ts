// debvisorctl's command tree, loaded lazily: start-up parses the global options and the first
// command word, then imports only the module of that command. Every other top-level command is
// a stub with its name and description, so `debvisorctl --help` still lists them all. The man
// page and the shell completions are generated from the full tree (debvisorctlFullProgram).
//
// A new command module is one line in COMMAND_MODULES: its top-level commands with their
// descriptions (test/cli/program.test.ts checks they match what the module registers) and how to
// load it.
import { Command, Help, Option } from 'commander';
import { VERSION } from '../version.js';
import { EXIT, EXIT_STATUS_HELP } from './exit-codes.js';
import { commandOutput, FORMATS, type Format } from './formats.js';

export interface CommandModule {
  /**
   * The top-level commands the module registers, each with its description. A key is the name, or
   * for a command taking options or arguments itself the term --help shows, e.g. "events [options]".
   */
  readonly commands: Readonly<Record<string, string>>;
  /** Imports the module and registers its commands on the program. */
  readonly register: (program: Command) => Promise<void>;
}

/** Every command module, in --help order. One line each. */
export const COMMAND_MODULES: readonly CommandModule[] = [
  { commands: { whoami: 'show the identity the daemon sees for these credentials' }, register: async (p) => (await import('./whoami.js')).registerWhoAmICommand(p) },
  {
    commands: { apikey: 'API keys for CI pipelines and automation', role: 'roles and role bindings', quota: 'per-principal quotas' },
    register: async (p) => (await import('./access.js')).registerAccessCommands(p),
  },
  { commands: { access: 'authentication-failure blocks of the daemon connected to (each daemon keeps its own)' }, register: async (p) => (await import('./access-blocks.js')).registerAccessBlockCommands(p) },
  { commands: { session: 'user sessions of certificates acting for users (impersonation)' }, register: async (p) => (await import('./session.js')).registerSessionCommands(p) },
  { commands: { audit: 'inspect the daemon audit log' }, register: async (p) => (await import('./audit.js')).registerAuditCommands(p) },
  { commands: { pki: 'run the internal CA: create it, issue, renew and revoke certificates, check expiry (offline, on files)' }, register: async (p) => (await import('./pki.js')).registerPkiCommands(p) },
  { commands: { operation: 'long-running operations (migrations, provisioning, pruning, waiting shutdowns)' }, register: async (p) => (await import('./operation.js')).registerOperationCommands(p) },
  { commands: { 'events [options]': 'follow the live event feed (VM, operation, node, storage and access changes you may see)' }, register: async (p) => (await import('./events.js')).registerEventCommands(p) },
  { commands: { vm: 'virtual machines (libvirt domains) on the node' }, register: async (p) => (await import('./vm.js')).registerVmCommands(p) },
  { commands: { node: 'hypervisor nodes of the cluster' }, register: async (p) => (await import('./node.js')).registerNodeCommands(p) },
  {
    commands: { volume: 'storage volumes (RBD images, LVM logical volumes)', snapshot: 'snapshots of storage volumes', template: 'RBD templates: protected snapshots that volumes are cloned from' },
    register: async (p) => (await import('./storage.js')).registerStorageCommands(p),
  },
  { commands: { image: "the node's image library (content-addressed by SHA-256)" }, register: async (p) => (await import('./image.js')).registerImageCommands(p) },
  { commands: { migration: 'live migration and failover of VMs between nodes' }, register: async (p) => (await import('./migration.js')).registerMigrationCommands(p) },
  { commands: { store: "the daemon's own state: roles, bindings, API keys, quotas, operations" }, register: async (p) => (await import('./store.js')).registerStoreCommands(p) },
  { commands: { config: 'contexts: named daemons and credentials in ~/.config/debvisor/ctl.yaml' }, register: async (p) => (await import('./contexts.js')).registerConfigCommands(p) },
  { commands: { 'completion <shell>': 'print a shell completion script (bash, zsh or fish)' }, register: async (p) => (await import('./completion.js')).registerCompletionCommand(p, debvisorctlFullProgram) },
];

const CREDENTIALS_HELP =
  '\nCredentials and address, per item: explicit flags, then the environment (DEBVISORCTL_SERVER,\n' +
  'DEBVISORCTL_CA, DEBVISORCTL_CERT, DEBVISORCTL_KEY, DEBVISORCTL_API_KEY, DEBVISORCTL_API_KEY_FILE),\n' +
  'then the context (--context, else current-context of ~/.config/debvisor/ctl.yaml; see\n' +
  '`debvisorctl config --help`), then the dev PKI when run from a checkout after ./scripts/dev,\n' +
  'then /etc/debvisor/rpc/{ca-cert,client-cert,client-key}.pem. The identity comes whole from the\n' +
  'first of flags, environment and context that names one: --api-key is never joined by\n' +
  "DEBVISORCTL_CERT. Prefer --api-key-file and DEBVISORCTL_AS_SESSION: a flag's value shows in ps.\n";

/** The program with its global options, and no commands yet. */
function baseProgram(): Command {
  return new Command('debvisorctl')
    .description('Command line for the DebVisor control-plane daemon (debvisor-rpcd).')
    .version(VERSION)
    .option('-s, --server <host:port>', 'daemon address (env DEBVISORCTL_SERVER)')
    .option('--context <name>', 'use this context of ctl.yaml instead of its current-context')
    .option('--ca <file>', 'CA bundle that signed the daemon certificate (env DEBVISORCTL_CA)')
    .option('--cert <file>', 'client certificate (env DEBVISORCTL_CERT)')
    .option('--key <file>', 'client private key (env DEBVISORCTL_KEY)')
    .option('--api-key <token>', 'API key instead of a client certificate (env DEBVISORCTL_API_KEY)')
    .option('--api-key-file <file>', 'file holding the API key, mode 0600 (env DEBVISORCTL_API_KEY_FILE)')
    .option('--as <user>', 'act for this user (impersonation; the certificate needs access:impersonate)')
    .option('--as-group <group>', "the user's group, repeatable (with --as)", (value: string, previous: string[] | undefined) => [...(previous ?? []), value])
    .option('--as-reason <text>', 'why, recorded in the audit log (with --as)')
    .option('--as-session <token>', 'user session token, where the daemon requires one (with --as; env DEBVISORCTL_AS_SESSION)')
    .addOption(new Option('-o, --output <format>', 'output: text (tables fit 80 columns), wide (whole cells), json or yaml').choices(FORMATS).default('text'))
    .option('--timeout <seconds>', 'call deadline', '30')
    .addHelpText('after', `${CREDENTIALS_HELP}\n${EXIT_STATUS_HELP}`);
}

/**
 * Usage errors exit 2 (commander's default is 1, which here means the daemon refused); help and
 * --version exit 0. In JSON or YAML mode the message is a JSON document on stderr.
 */
function configureErrors(program: Command, jsonErrors: boolean): void {
  program.exitOverride((err) => {
    if (err.exitCode === 0) process.exit(EXIT.OK);
    if (jsonErrors && err.code !== 'commander.help' && err.code !== 'commander.helpDisplayed') {
      process.stderr.write(`${JSON.stringify({ error: { code: 'USAGE', message: err.message.replace(/^error: /, ''), exitCode: EXIT.USAGE } })}\n`);
    }
    process.exit(EXIT.USAGE);
  });
  if (jsonErrors) program.configureOutput({ outputError: () => undefined });
  // Before any action: tell output.ts the -o format; commands see 'json' or 'text' (see there).
  program.hook('preAction', async () => {
    const timeout = Number(program.opts<{ timeout: string }>().timeout);
    if (!Number.isFinite(timeout) || timeout <= 0) program.error(`error: option '--timeout <seconds>' argument '${program.opts<{ timeout: string }>().timeout}' is invalid. expected seconds, more than 0`, { exitCode: EXIT.USAGE });
    const chosen = program.opts<{ output: Format }>().output;
    await (await import('./output.js')).setOutputFormat(chosen);
    program.setOptionValueWithSource('output', commandOutput(chosen), program.getOptionValueSource('output') ?? 'default');
  });
}

/** The global options and the first command word of `args` (user arguments, without node and script). */
export function scanArguments(args: readonly string[]): { command: string | undefined; output: Format; helpFor: string | undefined } {
  const scanner = baseProgram().exitOverride().allowUnknownOption().allowExcessArguments().configureOutput({ writeOut: () => undefined, writeErr: () => undefined });
  let operands: string[] = [];
  try {
    operands = scanner.parseOptions([...args]).operands;
  } catch {
    // A bad global option: the real parse reports it.
  }
  const output = scanner.opts<{ output?: Format }>().output ?? 'text';
  const [first, second] = operands;
  return { command: first, output: FORMATS.includes(output) ? output : 'text', helpFor: first === 'help' ? second : undefined };
}

/**
 * The program for one invocation: the modules of the commands `args` name are loaded and
 * registered, every other top-level command is a stub. Unknown words load nothing: commander
 * reports them (with a suggestion) against the stubs.
 */
export async function debvisorctlProgram(args: readonly string[] = process.argv.slice(2)): Promise<Command> {
  const { command, output, helpFor } = scanArguments(args);
  const wanted = helpFor ?? command;
  const program = baseProgram();
  configureErrors(program, output === 'json' || output === 'yaml');
  const stubTerms = new Map<Command, string>();
  for (const module of COMMAND_MODULES) {
    const names = Object.keys(module.commands).map(commandName);
    if (wanted !== undefined && names.includes(wanted)) {
      await module.register(program);
      continue;
    }
    for (const [term, description] of Object.entries(module.commands)) stubTerms.set(program.command(commandName(term)).description(description), term);
  }
  const help = new Help();
  program.configureHelp({ subcommandTerm: (command) => stubTerms.get(command) ?? help.subcommandTerm(command) });
  return program;
}

/** "events [options]" → "events". */
export function commandName(term: string): string {
  return term.split(' ')[0] ?? term;
}

/** The whole tree, every module loaded: for the man page, the completions and tests. */
export async function debvisorctlFullProgram(): Promise<Command> {
  const program = baseProgram();
  configureErrors(program, false);
  for (const module of COMMAND_MODULES) await module.register(program);
  return program;
}

export async function runDebvisorctl(): Promise<void> {
  // grpc-js sends the address as TLS SNI even when it is an IP; Node warns about it
  // (DEP0123) on every run. Certificate checks still use the IP SAN, so hide only that one.
  process.removeAllListeners('warning');
  process.on('warning', (warning: NodeJS.ErrnoException) => {
    if (warning.code !== 'DEP0123') process.stderr.write(`${warning.name}: ${warning.message}\n`);
  });
  const program = await debvisorctlProgram();
  try {
    await program.parseAsync();
  } catch (err) {
    (await import('./output.js')).fail(err);
  }
}
