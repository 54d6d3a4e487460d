// Credentials from files, for SDK users: a CA bundle, then a client certificate and key, or an
// API key file (never an inline key). debvisorctl resolves its own (flags, environment,
// contexts file); both end in the same shape.
import { readFile } from 'node:fs/promises';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { tlsCredentials, type CallMetadata } from './client.js';

export interface CredentialFiles {
  /** PEM bundle of the DebVisor CA the daemon's certificate is checked against. */
  readonly ca: string;
  /** PEM client certificate and its key (mutual TLS). */
  readonly cert?: string;
  readonly key?: string;
  /** A file holding an API key (sent as `authorization: Bearer …`); instead of cert and key. */
  readonly apiKeyFile?: string;
}

export interface LoadedCredentials {
  readonly credentials: ChannelCredentials;
  /** Metadata every call must send: the API key, if one is used. */
  readonly metadata: CallMetadata;
}

async function read(path: string, what: string): Promise<Buffer> {
  try {
    return await readFile(path);
  } catch (err) {
    throw new Error(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
  }
}

export async function loadCredentials(files: CredentialFiles): Promise<LoadedCredentials> {
  if ((files.cert === undefined) !== (files.key === undefined)) throw new Error('cert and key must be given together');
  if (files.apiKeyFile !== undefined && files.cert !== undefined) {
    // The daemon lets a certificate decide and ignores the key: sending both hides which one acts.
    throw new Error('give either cert and key or apiKeyFile, not both');
  }
  const [ca, cert, key, apiKey] = await Promise.all([
    read(files.ca, 'CA bundle'),
    files.cert === undefined ? undefined : read(files.cert, 'client certificate'),
    files.key === undefined ? undefined : read(files.key, 'client key'),
    files.apiKeyFile === undefined ? undefined : read(files.apiKeyFile, 'API key file'),
  ]);
  const token = apiKey?.toString('utf8').trim();
  if (apiKey !== undefined && !token) throw new Error(`API key file ${files.apiKeyFile} is empty`);
  return { credentials: tlsCredentials({ ca, cert, key }), metadata: token ? { authorization: `Bearer ${token}` } : {} };
}
