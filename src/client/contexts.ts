// The contexts file of debvisorctl and SDK users (~/.config/debvisor/ctl.yaml, as kubectl keeps
// its contexts): named daemons with their CA, certificate and key, or an API key file (never an
// inline key). Both clients read it here; neither imports server code.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { CredentialFileError, readApiKeyFile, type CredentialFiles } from './credentials.js';

export { CredentialFileError, readApiKeyFile };
import { loadYaml } from './yaml.js';

/** One named context of ctl.yaml. Paths are absolute once loaded. */
export interface CtlContext {
  readonly name: string;
  readonly server?: string | undefined;
  readonly ca?: string | undefined;
  readonly cert?: string | undefined;
  readonly key?: string | undefined;
  /** A file holding the API key; the file never holds the key inline. */
  readonly apiKeyFile?: string | undefined;
}

export interface CtlConfig {
  readonly currentContext?: string | undefined;
  readonly contexts: readonly CtlContext[];
}

export type Env = Readonly<Record<string, string | undefined>>;

/** $XDG_CONFIG_HOME/debvisor/ctl.yaml, else ~/.config/debvisor/ctl.yaml. */
export function ctlConfigPath(env: Env = process.env): string {
  const base = env.XDG_CONFIG_HOME && isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : join(env.HOME || homedir(), '.config');
  return join(base, 'debvisor', 'ctl.yaml');
}

/** The keys a context may have in the file, and their CtlContext names. */
const CONTEXT_KEYS = { name: 'name', server: 'server', ca: 'ca', cert: 'cert', key: 'key', 'api-key-file': 'apiKeyFile' } as const;
const INLINE_SECRET_KEYS = ['api-key', 'apiKey', 'api_key', 'token'];

function problem(file: string, what: string): CredentialFileError {
  return new CredentialFileError(`${file}: ${what}`);
}

/**
 * Checks a parsed ctl.yaml document and makes its paths absolute (relative ones are relative to
 * the file, as kubectl does). An API key written inline is refused: it belongs in a file.
 */
export function parseCtlConfig(document: unknown, file: string): CtlConfig {
  if (document === null || document === undefined) return { contexts: [] };
  if (typeof document !== 'object' || Array.isArray(document)) throw problem(file, 'expected a mapping with contexts and current-context');
  const top = document as Record<string, unknown>;
  for (const key of Object.keys(top)) if (key !== 'contexts' && key !== 'current-context') throw problem(file, `unknown key "${key}" (expected contexts, current-context)`);
  const current = top['current-context'];
  if (current !== undefined && current !== null && typeof current !== 'string') throw problem(file, 'current-context must be a context name');
  const list = top.contexts ?? [];
  if (!Array.isArray(list)) throw problem(file, 'contexts must be a list');
  const base = dirname(file);
  const names = new Set<string>();
  const contexts = list.map((entry: unknown, i): CtlContext => {
    const where = `contexts[${i}]`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) throw problem(file, `${where}: expected a mapping`);
    const fields = entry as Record<string, unknown>;
    const inline = INLINE_SECRET_KEYS.find((key) => key in fields);
    if (inline) throw problem(file, `${where}.${inline}: an API key is never written inline; put it in a file (mode 0600) and name it with api-key-file`);
    const context: Record<string, string> = {};
    for (const [key, value] of Object.entries(fields)) {
      if (!(key in CONTEXT_KEYS)) throw problem(file, `${where}: unknown key "${key}" (expected ${Object.keys(CONTEXT_KEYS).join(', ')})`);
      const name = CONTEXT_KEYS[key as keyof typeof CONTEXT_KEYS];
      if (typeof value !== 'string' || value === '') throw problem(file, `${where}.${key}: expected a non-empty string`);
      context[name] = name === 'name' || name === 'server' ? value : resolve(base, value);
    }
    const name = context.name;
    if (!name) throw problem(file, `${where}.name: required`);
    if (names.has(name)) throw problem(file, `${where}.name: "${name}" is defined twice`);
    names.add(name);
    if ((context.cert === undefined) !== (context.key === undefined)) throw problem(file, `${where}: cert and key go together`);
    return { ...context, name };
  });
  return { currentContext: typeof current === 'string' && current !== '' ? current : undefined, contexts };
}

/** The contexts file parsed, or undefined when there is none. YAML is loaded only if the file exists. */
export async function loadCtlConfig(env: Env = process.env, file: string = ctlConfigPath(env)): Promise<CtlConfig | undefined> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CredentialFileError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const { parse } = await loadYaml();
  let document: unknown;
  try {
    document = parse(text);
  } catch (err) {
    throw problem(file, `not valid YAML: ${(err as Error).message.split('\n')[0] ?? ''}`);
  }
  return parseCtlConfig(document, file);
}

/** The context a call uses: the one named explicitly (--context), else current-context; undefined without either. */
export function selectContext(explicit: string | undefined, config: CtlConfig | undefined, file = '(contexts file)'): CtlContext | undefined {
  const wanted = explicit ?? config?.currentContext;
  if (wanted === undefined) return undefined;
  const found = config?.contexts.find((context) => context.name === wanted);
  if (found) return found;
  const known = config?.contexts.map((context) => context.name) ?? [];
  const origin = explicit !== undefined ? '--context' : `current-context in ${file}`;
  throw new CredentialFileError(`${origin}: no context named "${wanted}"${known.length ? ` (known: ${known.join(', ')})` : ` in ${file}`}`);
}


/**
 * The daemon address and credential files of a context (`name`, else the file's current-context),
 * for `connect()`. The API key file is checked as debvisorctl checks it (owner-only, not empty).
 */
export async function contextCredentials(options: { name?: string; env?: Env; file?: string } = {}): Promise<{ address: string; context: string; credentials: CredentialFiles }> {
  const env = options.env ?? process.env;
  const file = options.file ?? ctlConfigPath(env);
  const context = selectContext(options.name, await loadCtlConfig(env, file), file);
  if (!context) throw new CredentialFileError(`${file}: no context named and no current-context`);
  if (context.server === undefined || context.ca === undefined) throw new CredentialFileError(`${file}: context "${context.name}" needs a server and a ca`);
  if (context.apiKeyFile !== undefined) readApiKeyFile(context.apiKeyFile);
  const credentials: CredentialFiles =
    context.apiKeyFile !== undefined ? { ca: context.ca, apiKeyFile: context.apiKeyFile } : { ca: context.ca, ...(context.cert !== undefined && context.key !== undefined ? { cert: context.cert, key: context.key } : {}) };
  return { address: context.server, context: context.name, credentials };
}
