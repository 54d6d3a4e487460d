// How debvisorctl connects: the credential plan of src/cli/credentials.ts (flags, environment,
// context, dev PKI, /etc) turned into TLS credentials and call metadata, with the impersonation
// headers of --as.
import { readFileSync } from 'node:fs';
import { tlsCredentials, type CallMetadata, type Connection } from '../client/client.js';
import { planCredentials, readApiKeyFile, type CredentialFlags, type CtlConfig, type Env } from './credentials.js';
import { UsageError } from './exit-codes.js';
import { IMPERSONATION_HEADERS, impersonationProblem, type ImpersonationClaim, type ImpersonationHeader } from '../rpc/impersonation-names.js';

export interface ConnectionFlags extends CredentialFlags {
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

function readPem(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
  }
}

const FLAG_OF: Record<ImpersonationHeader, string> = {
  'impersonate-user': '--as',
  'impersonate-group': '--as-group',
  'impersonate-reason': '--as-reason',
  'impersonate-session': '--as-session',
};

/** The impersonate-* headers of --as, --as-group, --as-reason and --as-session (or DEBVISORCTL_AS_SESSION). */
function impersonationHeaders(flags: ConnectionFlags, env: Env, apiKey: string | undefined): Record<string, string | string[]> {
  const claim: ImpersonationClaim = {
    user: flags.as,
    groups: flags.asGroup ?? [],
    reason: flags.asReason,
    // The environment's token only goes with an --as of this invocation.
    session: flags.asSession ?? (flags.as !== undefined ? env.DEBVISORCTL_AS_SESSION || undefined : undefined),
  };
  const problem = impersonationProblem(claim);
  if (problem) throw new UsageError(`${FLAG_OF[problem.header]}: ${problem.problem.replace(/impersonate-[a-z]+/g, (header) => FLAG_OF[header as ImpersonationHeader])}`);
  if (claim.user === undefined) return {};
  if (apiKey !== undefined) {
    throw new UsageError('--as needs a client certificate: API keys can never impersonate (drop --api-key or DEBVISORCTL_API_KEY, and use the certificate that holds access:impersonate)');
  }
  return {
    [IMPERSONATION_HEADERS.user]: claim.user,
    ...(claim.groups.length > 0 ? { [IMPERSONATION_HEADERS.group]: [...claim.groups] } : {}),
    ...(claim.reason !== undefined ? { [IMPERSONATION_HEADERS.reason]: claim.reason } : {}),
    ...(claim.session !== undefined ? { [IMPERSONATION_HEADERS.session]: claim.session } : {}),
  };
}

/**
 * The connection for `flags` (see src/cli/credentials.ts for the order of the sources). `config`
 * is the contexts file, loaded by the caller (loadCtlConfig), and `file` its path for messages.
 */
export function resolveConnection(flags: ConnectionFlags, env: Env = process.env, config?: CtlConfig, file?: string): ResolvedConnection {
  const plan = planCredentials(flags, env, config, file);
  const apiKey = plan.apiKey === undefined ? undefined : 'secret' in plan.apiKey ? plan.apiKey.secret : readApiKeyFile(plan.apiKey.file);
  const impersonation = impersonationHeaders(flags, env, apiKey);
  const credentials = tlsCredentials({
    ca: readPem(plan.ca, 'CA bundle'),
    cert: plan.cert ? readPem(plan.cert, 'client certificate') : undefined,
    key: plan.key ? readPem(plan.key, 'client key') : undefined,
  });
  const via = plan.context !== undefined ? ` (context ${plan.context})` : '';
  return {
    address: plan.address,
    credentials,
    metadata: { ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}), ...impersonation },
    describe: `${plan.address} as ${plan.cert ? `certificate ${plan.cert}` : 'API key'}${flags.as !== undefined ? ` for user:${flags.as}` : ''}${via}`,
  };
}
