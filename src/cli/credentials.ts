// Where a debvisorctl call gets its daemon address and credentials: the precedence of the
// sources, over the contexts file that the SDK reads too (src/client/contexts.ts). Pure planning
// over paths: no gRPC, no server code.
//
// Precedence, per item: explicit flags, then the environment, then the context (--context, else
// the file's current-context), then the dev PKI (DEBVISOR_DEV_DIR, set by bin/debvisorctl after
// ./scripts/dev), then /etc/debvisor/rpc. The identity (certificate and key, or API key) is taken
// whole from the first of flags, environment and context that names one, never mixed across
// them: an explicit --api-key is not joined by DEBVISORCTL_CERT (the daemon would let the
// certificate decide), and --cert/--key are not joined by DEBVISORCTL_API_KEY.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { selectContext, type CtlConfig, type Env } from '../client/contexts.js';
import { UsageError } from './exit-codes.js';

export { ctlConfigPath, loadCtlConfig, parseCtlConfig, readApiKeyFile, type CtlConfig, type CtlContext, type Env } from '../client/contexts.js';

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

export const DEFAULT_SERVER = '127.0.0.1:7443';
export const SYSTEM_DIR = '/etc/debvisor/rpc';

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
  const context = selectContext(flags.context, config, file);
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

