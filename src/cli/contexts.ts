// debvisorctl config get-contexts|current-context|use-context|set-context|delete-context: named
// daemons and credentials in ctl.yaml (src/cli/credentials.ts reads it), as kubectl keeps them.
// The file is written atomically with mode 0600, its directory 0700.
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';
import { writeFileAtomic } from '../pki/files.js';
import { ctlConfigPath, loadCtlConfig, readApiKeyFile, type CtlConfig, type CtlContext } from './credentials.js';
import { UsageError } from './exit-codes.js';
import { fail, printDocument, printTable } from './output.js';
import { loadYaml } from '../client/yaml.js';

const CONFIG_MODE = 0o600;

/** A context as the file spells it (kebab-case keys, only what is set). */
function fileContext(context: CtlContext): Record<string, string> {
  return {
    name: context.name,
    ...(context.server !== undefined && { server: context.server }),
    ...(context.ca !== undefined && { ca: context.ca }),
    ...(context.cert !== undefined && { cert: context.cert }),
    ...(context.key !== undefined && { key: context.key }),
    ...(context.apiKeyFile !== undefined && { 'api-key-file': context.apiKeyFile }),
  };
}

export function configDocument(config: CtlConfig): Record<string, unknown> {
  return { ...(config.currentContext !== undefined && { 'current-context': config.currentContext }), contexts: config.contexts.map(fileContext) };
}

export async function saveCtlConfig(file: string, config: CtlConfig): Promise<void> {
  const { stringify } = await loadYaml();
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const text = `# debvisorctl contexts (debvisorctl config --help). API keys are never written here: api-key-file names a 0600 file.\n${stringify(configDocument(config))}`;
  await writeFileAtomic(file, text, CONFIG_MODE);
}

function authOf(context: CtlContext): string {
  if (context.apiKeyFile !== undefined) return `api key file ${context.apiKeyFile}`;
  if (context.cert !== undefined) return `certificate ${context.cert}`;
  return '(default)';
}

/** The flags of `set-context`: the global ones the operator gave on this command line. */
interface SetContextFlags {
  server?: string;
  ca?: string;
  cert?: string;
  key?: string;
  apiKey?: string;
  apiKeyFile?: string;
}

/** A context updated with what was given; a certificate and an API key file replace each other. */
export function updatedContext(existing: CtlContext | undefined, name: string, given: SetContextFlags): CtlContext {
  if (given.apiKey !== undefined) {
    throw new UsageError('set-context never stores an API key inline: write it to a file (chmod 600) and give --api-key-file <file>');
  }
  if ((given.cert === undefined) !== (given.key === undefined)) throw new UsageError('--cert and --key go together');
  const path = (value: string | undefined) => (value === undefined ? undefined : resolve(value));
  const base = existing ?? { name };
  const identity =
    given.apiKeyFile !== undefined
      ? { cert: undefined, key: undefined, apiKeyFile: path(given.apiKeyFile) }
      : given.cert !== undefined
        ? { cert: path(given.cert), key: path(given.key), apiKeyFile: undefined }
        : { cert: base.cert, key: base.key, apiKeyFile: base.apiKeyFile };
  return {
    name,
    server: given.server ?? base.server,
    ca: path(given.ca) ?? base.ca,
    ...identity,
  };
}

export function registerConfigCommands(program: Command): void {
  const file = () => ctlConfigPath();
  const load = async (): Promise<CtlConfig> => (await loadCtlConfig(process.env, file())) ?? { contexts: [] };
  const run =
    <A extends unknown[]>(action: (...args: A) => Promise<void>) =>
    async (...args: A): Promise<void> => {
      try {
        await action(...args);
      } catch (err) {
        fail(err);
      }
    };
  const flags = () => program.opts<{ output: string }>();

  const config = program
    .command('config')
    .description('contexts: named daemons and credentials in ~/.config/debvisor/ctl.yaml')
    .addHelpText(
      'after',
      '\nThe file ($XDG_CONFIG_HOME/debvisor/ctl.yaml, else ~/.config/debvisor/ctl.yaml; mode 0600):\n' +
        '  current-context: prod\n' +
        '  contexts:\n' +
        '    - name: prod\n' +
        '      server: hv1.example.org:7443\n' +
        '      ca: /etc/debvisor/rpc/ca-cert.pem\n' +
        '      cert: /home/me/.config/debvisor/me-cert.pem\n' +
        '      key: /home/me/.config/debvisor/me-key.pem\n' +
        '    - name: ci\n' +
        '      server: hv1.example.org:7443\n' +
        '      ca: /etc/debvisor/rpc/ca-cert.pem\n' +
        '      api-key-file: /home/me/.config/debvisor/ci.key\n' +
        'An API key is never written inline (the file is refused): api-key-file names a file only\n' +
        'its owner can read. Relative paths are relative to the file. Flags and the environment\n' +
        'still win over the context, item by item.',
    );

  config
    .command('get-contexts')
    .description('list the contexts; * marks the current one')
    .action(
      run(async () => {
        const loaded = await load();
        if (flags().output === 'json') {
          printDocument(configDocument(loaded));
          return;
        }
        printTable(
          ['current', 'name', 'server', 'credentials'],
          loaded.contexts.map((context) => [context.name === loaded.currentContext ? '*' : '', context.name, context.server ?? '(default)', authOf(context)]),
        );
      }),
    );

  config
    .command('current-context')
    .description('print the name of the current context (exit 1 if none is set)')
    .action(
      run(async () => {
        const current = (await load()).currentContext;
        if (current === undefined) throw new Error(`no current-context in ${file()}`);
        process.stdout.write(`${current}\n`);
      }),
    );

  config
    .command('use-context')
    .description('make a context the current one')
    .argument('<name>', 'context name')
    .action(
      run(async (name: string) => {
        const loaded = await load();
        if (!loaded.contexts.some((context) => context.name === name)) {
          throw new UsageError(`no context named "${name}" in ${file()}${loaded.contexts.length ? ` (known: ${loaded.contexts.map((c) => c.name).join(', ')})` : ''}`);
        }
        await saveCtlConfig(file(), { ...loaded, currentContext: name });
        process.stdout.write(`switched to context "${name}"\n`);
      }),
    );

  config
    .command('set-context')
    .description('create or update a context from the global --server, --ca, --cert/--key or --api-key-file given here')
    .argument('<name>', 'context name')
    .option('--current', 'also make it the current context')
    .addHelpText('after', '\nExample: debvisorctl config set-context ci --server hv1:7443 --ca ca.pem --api-key-file ~/.config/debvisor/ci.key --current')
    .action(
      run(async (name: string, opts: { current?: boolean }) => {
        if (!/^[A-Za-z0-9._@-]{1,64}$/.test(name)) throw new UsageError('a context name is 1 to 64 letters, digits, ".", "_", "@" or "-"');
        // Only what was given on this command line, not the environment's.
        const given = Object.fromEntries(
          (['server', 'ca', 'cert', 'key', 'apiKey', 'apiKeyFile'] as const)
            .filter((option) => program.getOptionValueSource(option) === 'cli')
            .map((option) => [option, program.opts<Record<string, string>>()[option]]),
        ) as SetContextFlags;
        if (given.apiKeyFile !== undefined) readApiKeyFile(resolve(given.apiKeyFile));
        const loaded = await load();
        const existing = loaded.contexts.find((context) => context.name === name);
        const context = updatedContext(existing, name, given);
        const contexts = existing ? loaded.contexts.map((each) => (each.name === name ? context : each)) : [...loaded.contexts, context];
        await saveCtlConfig(file(), { contexts, currentContext: opts.current ? name : loaded.currentContext });
        process.stdout.write(`${existing ? 'updated' : 'created'} context "${name}" in ${file()}${opts.current ? ' (current)' : ''}\n`);
      }),
    );

  config
    .command('delete-context')
    .description('remove a context (and unset current-context if it was the current one)')
    .argument('<name>', 'context name')
    .action(
      run(async (name: string) => {
        const loaded = await load();
        if (!loaded.contexts.some((context) => context.name === name)) throw new UsageError(`no context named "${name}" in ${file()}`);
        await saveCtlConfig(file(), {
          contexts: loaded.contexts.filter((context) => context.name !== name),
          currentContext: loaded.currentContext === name ? undefined : loaded.currentContext,
        });
        process.stdout.write(`deleted context "${name}"\n`);
      }),
    );
}
