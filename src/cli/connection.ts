// How debvisorctl finds the daemon and its credentials: flags, then environment,
// then the dev PKI (under ./scripts/dev), then the system paths.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tlsCredentials, type Connection } from '../client/client.js';

export interface ConnectionFlags {
  server?: string;
  ca?: string;
  cert?: string;
  key?: string;
  apiKey?: string;
}

export interface ResolvedConnection extends Connection {
  /** Metadata sent with every call (the API key, if one is used). */
  readonly metadata: Record<string, string>;
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

export function resolveConnection(flags: ConnectionFlags, env: NodeJS.ProcessEnv = process.env): ResolvedConnection {
  const address = flags.server ?? env.DEBVISORCTL_SERVER ?? '127.0.0.1:7443';
  const apiKey = flags.apiKey ?? env.DEBVISORCTL_API_KEY;
  const dev = devDefaults(env);
  const ca = flags.ca ?? env.DEBVISORCTL_CA ?? dev?.ca ?? join(SYSTEM_DIR, 'ca-cert.pem');
  // An API key replaces the client certificate unless one is asked for explicitly.
  const cert = flags.cert ?? env.DEBVISORCTL_CERT ?? (apiKey ? undefined : (dev?.cert ?? join(SYSTEM_DIR, 'client-cert.pem')));
  const key = flags.key ?? env.DEBVISORCTL_KEY ?? (apiKey ? undefined : (dev?.key ?? join(SYSTEM_DIR, 'client-key.pem')));
  if ((cert === undefined) !== (key === undefined)) throw new Error('--cert and --key must be given together');
  const credentials = tlsCredentials({
    ca: readPem(ca, 'CA bundle'),
    cert: cert ? readPem(cert, 'client certificate') : undefined,
    key: key ? readPem(key, 'client key') : undefined,
  });
  return {
    address,
    credentials,
    metadata: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
    describe: `${address} as ${cert ? `certificate ${cert}` : 'API key'}`,
  };
}
