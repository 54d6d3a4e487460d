// How debvisorctl finds the daemon and its credentials: flags, then environment,
// then the dev PKI (under ./scripts/dev), then the system paths.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tlsCredentials, type CallMetadata, type Connection } from '../client/client.js';
import { IMPERSONATION_HEADERS, impersonationProblem, type ImpersonationClaim, type ImpersonationHeader } from '../rpc/impersonation-names.js';

export interface ConnectionFlags {
  server?: string;
  ca?: string;
  cert?: string;
  key?: string;
  apiKey?: string;
  /** --as: the user to act for (impersonation). */
  as?: string;
  asGroup?: string[];
  asReason?: string;
  /** --as-session; DEBVISORCTL_AS_SESSION keeps the token out of ps and shell history. */
  asSession?: string;
}

export interface ResolvedConnection extends Connection {
  /** Metadata sent with every call: the API key, if one is used, and the impersonation headers. */
  readonly metadata: CallMetadata;
  readonly describe: string;
}

const SYSTEM_DIR = '/etc/debvisor/rpc';

function devDefaults(env: NodeJS.ProcessEnv): { ca: string; cert: string; key: string } | undefined {
  const dir = env.DEBVISOR_DEV_DIR;
  if (!dir || !existsSync(join(dir, 'pki', 'ca-cert.pem'))) return undefined;
  const pki = join(dir, 'pki');
  return { ca: join(pki, 'ca-cert.pem'), cert: join(pki, 'admin-cert.pem'), key: join(pki, 'admin-key.pem') };
}

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
  }
}

interface Credentials {
  readonly cert: string | undefined;
  readonly key: string | undefined;
  readonly apiKey: string | undefined;
}

/**
 * Flags beat the environment as a whole: `--api-key` alone is not joined by a DEBVISORCTL_CERT
 * (the daemon would let the certificate decide and ignore the key), and `--cert`/`--key` are not
 * joined by a DEBVISORCTL_API_KEY (a secret sent for nothing). An API key replaces the default
 * certificate unless one is asked for explicitly.
 */
function credentialsOf(flags: ConnectionFlags, env: NodeJS.ProcessEnv): Credentials {
  const dev = devDefaults(env);
  const certFlagged = flags.cert !== undefined || flags.key !== undefined;
  if (certFlagged || flags.apiKey !== undefined) {
    return {
      cert: certFlagged ? (flags.cert ?? env.DEBVISORCTL_CERT) : undefined,
      key: certFlagged ? (flags.key ?? env.DEBVISORCTL_KEY) : undefined,
      apiKey: flags.apiKey,
    };
  }
  const apiKey = env.DEBVISORCTL_API_KEY;
  return {
    cert: env.DEBVISORCTL_CERT ?? (apiKey ? undefined : (dev?.cert ?? join(SYSTEM_DIR, 'client-cert.pem'))),
    key: env.DEBVISORCTL_KEY ?? (apiKey ? undefined : (dev?.key ?? join(SYSTEM_DIR, 'client-key.pem'))),
    apiKey,
  };
}

const FLAG_OF: Record<ImpersonationHeader, string> = {
  'impersonate-user': '--as',
  'impersonate-group': '--as-group',
  'impersonate-reason': '--as-reason',
  'impersonate-session': '--as-session',
};

/** The impersonate-* headers of --as, --as-group, --as-reason and --as-session (or DEBVISORCTL_AS_SESSION). */
function impersonationHeaders(flags: ConnectionFlags, env: NodeJS.ProcessEnv, apiKey: string | undefined): Record<string, string | string[]> {
  const claim: ImpersonationClaim = {
    user: flags.as,
    groups: flags.asGroup ?? [],
    reason: flags.asReason,
    // The environment's token only goes with an --as of this invocation.
    session: flags.asSession ?? (flags.as !== undefined ? env.DEBVISORCTL_AS_SESSION || undefined : undefined),
  };
  const problem = impersonationProblem(claim);
  if (problem) throw new Error(`${FLAG_OF[problem.header]}: ${problem.problem.replace(/impersonate-[a-z]+/g, (header) => FLAG_OF[header as ImpersonationHeader])}`);
  if (claim.user === undefined) return {};
  if (apiKey !== undefined) {
    throw new Error('--as needs a client certificate: API keys can never impersonate (drop --api-key or DEBVISORCTL_API_KEY, and use the certificate that holds access:impersonate)');
  }
  return {
    [IMPERSONATION_HEADERS.user]: claim.user,
    ...(claim.groups.length > 0 ? { [IMPERSONATION_HEADERS.group]: [...claim.groups] } : {}),
    ...(claim.reason !== undefined ? { [IMPERSONATION_HEADERS.reason]: claim.reason } : {}),
    ...(claim.session !== undefined ? { [IMPERSONATION_HEADERS.session]: claim.session } : {}),
  };
}

export function resolveConnection(flags: ConnectionFlags, env: NodeJS.ProcessEnv = process.env): ResolvedConnection {
  const address = flags.server ?? env.DEBVISORCTL_SERVER ?? '127.0.0.1:7443';
  const { cert, key, apiKey } = credentialsOf(flags, env);
  const ca = flags.ca ?? env.DEBVISORCTL_CA ?? devDefaults(env)?.ca ?? join(SYSTEM_DIR, 'ca-cert.pem');
  if ((cert === undefined) !== (key === undefined)) throw new Error('--cert and --key must be given together');
  const impersonation = impersonationHeaders(flags, env, apiKey);
  const credentials = tlsCredentials({
    ca: readPem(ca, 'CA bundle'),
    cert: cert ? readPem(cert, 'client certificate') : undefined,
    key: key ? readPem(key, 'client key') : undefined,
  });
  return {
    address,
    credentials,
    metadata: { ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}), ...impersonation },
    describe: `${address} as ${cert ? `certificate ${cert}` : 'API key'}${flags.as !== undefined ? ` for user:${flags.as}` : ''}`,
  };
}
