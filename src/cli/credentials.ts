// Where a debvisorctl call (or any client on this host) gets its daemon address and credentials:
// the contexts file (~/.config/debvisor/ctl.yaml) and the precedence of the sources. Pure
// planning over paths: no gRPC, no server code, so an SDK can reuse it as it is.
//
// Precedence, per item: explicit flags, then the environment, then the context (--context, else
// the file's current-context), then the dev PKI (DEBVISOR_DEV_DIR, set by bin/debvisorctl after
// ./scripts/dev), then /etc/debvisor/rpc. The identity (certificate and key, or API key) is taken
// whole from the first of flags, environment and context that names one, never mixed across
// them: an explicit --api-key is not joined by DEBVISORCTL_CERT (the daemon would let the
// certificate decide), and --cert/--key are not joined by DEBVISORCTL_API_KEY.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { UsageError } from './exit-codes.js';
import { loadYaml } from './yaml.js';

export interface CredentialFlags {
  server?: string | undefined;
  ca?: string | undefined;
  cert?: string | undefined;
  key?: string | undefined;
  /** The secret itself (a flag shows in ps and shell history: prefer apiKeyFile). */
  apiKey?: string | undefined;
  apiKeyFile?: string | undefined;
  /** --context: a context of the contexts file instead of its current-context. */
  context?: string | undefined;
}

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

export const DEFAULT_SERVER = '127.0.0.1:7443';
export const SYSTEM_DIR = '/etc/debvisor/rpc';

/** $XDG_CONFIG_HOME/debvisor/ctl.yaml, else ~/.config/debvisor/ctl.yaml. */
export function ctlConfigPath(env: Env = process.env): string {
  const base = env.XDG_CONFIG_HOME && isAbsolute(env.XDG_CONFIG_HOME) ? env.XDG_CONFIG_HOME : join(env.HOME || homedir(), '.config');
  return join(base, 'debvisor', 'ctl.yaml');
}

/** The keys a context may have in the file, and their CtlContext names. */
const CONTEXT_KEYS = { name: 'name', server: 'server', ca: 'ca', cert: 'cert', key: 'key', 'api-key-file': 'apiKeyFile' } as const;
const INLINE_SECRET_KEYS = ['api-key', 'apiKey', 'api_key', 'token'];

function problem(file: string, what: string): UsageError {
  return new UsageError(`${file}: ${what}`);
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
    throw new UsageError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
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

/** The context a call uses: --context, else current-context; undefined without either. */
export function selectContext(flags: CredentialFlags, config: CtlConfig | undefined, file = '(contexts file)'): CtlContext | undefined {
  const wanted = flags.context ?? config?.currentContext;
  if (wanted === undefined) return undefined;
  const found = config?.contexts.find((context) => context.name === wanted);
  if (found) return found;
  const known = config?.contexts.map((context) => context.name) ?? [];
  const origin = flags.context !== undefined ? '--context' : `current-context in ${file}`;
  throw new UsageError(`${origin}: no context named "${wanted}"${known.length ? ` (known: ${known.join(', ')})` : ` in ${file}`}`);
}

/** What the call needs, as paths and an API key source; nothing read yet but the dev PKI's presence. */
export interface CredentialPlan {
  readonly address: string;
  readonly ca: string;
  readonly cert?: string | undefined;
  readonly key?: string | undefined;
  /** The key itself (from --api-key or DEBVISORCTL_API_KEY), or the file that holds it. */
  readonly apiKey?: { readonly secret: string } | { readonly file: string } | undefined;
  /** Where the identity came from: flags, environment, context NAME, dev PKI, system. */
  readonly identitySource: string;
  readonly context?: string | undefined;
}

function devPki(env: Env): { ca: string; cert: string; key: string } | undefined {
  const dir = env.DEBVISOR_DEV_DIR;
  if (!dir || !existsSync(join(dir, 'pki', 'ca-cert.pem'))) return undefined;
  const pki = join(dir, 'pki');
  return { ca: join(pki, 'ca-cert.pem'), cert: join(pki, 'admin-cert.pem'), key: join(pki, 'admin-key.pem') };
}

interface Identity {
  cert?: string | undefined;
  key?: string | undefined;
  apiKey?: CredentialPlan['apiKey'];
}

function apiKeyOf(secret: string | undefined, file: string | undefined): CredentialPlan['apiKey'] {
  if (secret !== undefined && secret !== '') return { secret };
  if (file !== undefined && file !== '') return { file };
  return undefined;
}

function named(identity: Identity): boolean {
  return identity.cert !== undefined || identity.key !== undefined || identity.apiKey !== undefined;
}

export function planCredentials(flags: CredentialFlags, env: Env, config?: CtlConfig, file?: string): CredentialPlan {
  const context = selectContext(flags, config, file);
  const dev = devPki(env);
  const fromFlags: Identity = { cert: flags.cert, key: flags.key, apiKey: apiKeyOf(flags.apiKey, flags.apiKeyFile) };
  const fromEnv: Identity = {
    cert: env.DEBVISORCTL_CERT || undefined,
    key: env.DEBVISORCTL_KEY || undefined,
    apiKey: apiKeyOf(env.DEBVISORCTL_API_KEY, env.DEBVISORCTL_API_KEY_FILE),
  };
  const fromContext: Identity = { cert: context?.cert, key: context?.key, apiKey: apiKeyOf(undefined, context?.apiKeyFile) };
  let identity: Identity;
  let identitySource: string;
  if (named(fromFlags)) {
    // Half a pair on the command line takes its other half from the environment, as before.
    const certFlagged = flags.cert !== undefined || flags.key !== undefined;
    identity = certFlagged ? { cert: flags.cert ?? fromEnv.cert, key: flags.key ?? fromEnv.key, apiKey: fromFlags.apiKey } : fromFlags;
    identitySource = 'flags';
  } else if (named(fromEnv)) {
    identity = fromEnv;
    identitySource = 'environment';
  } else if (context && named(fromContext)) {
    identity = fromContext;
    identitySource = `context ${context.name}`;
  } else if (dev) {
    identity = { cert: dev.cert, key: dev.key };
    identitySource = 'dev PKI';
  } else {
    identity = { cert: join(SYSTEM_DIR, 'client-cert.pem'), key: join(SYSTEM_DIR, 'client-key.pem') };
    identitySource = 'system';
  }
  if ((identity.cert === undefined) !== (identity.key === undefined)) throw new UsageError('--cert and --key must be given together');
  return {
    address: flags.server ?? (env.DEBVISORCTL_SERVER || undefined) ?? context?.server ?? DEFAULT_SERVER,
    ca: flags.ca ?? (env.DEBVISORCTL_CA || undefined) ?? context?.ca ?? dev?.ca ?? join(SYSTEM_DIR, 'ca-cert.pem'),
    cert: identity.cert,
    key: identity.key,
    apiKey: identity.apiKey,
    identitySource,
    context: context?.name,
  };
}

/**
 * The API key in `file`: its first line, trimmed. A file others can read is refused (as ssh
 * refuses such a key): the key acts with its owner's permissions.
 */
export function readApiKeyFile(file: string): string {
  let text: string;
  try {
    if ((statSync(file).mode & 0o007) !== 0) throw new UsageError(`API key file ${file} is readable by others: chmod 600 it`);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`cannot read API key file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const key = text.split('\n')[0]?.trim() ?? '';
  if (key === '') throw new UsageError(`API key file ${file} is empty`);
  return key;
}
