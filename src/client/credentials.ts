// Credentials from files, for SDK users: a CA bundle, then a client certificate and key, or an
// API key file (never an inline key). debvisorctl resolves its own (flags, environment,
// contexts file); both end in the same shape.
import { statSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { tlsCredentials, type CallMetadata } from './client.js';

/** A contexts file or credential file that cannot be used (debvisorctl: a usage error, exit 2). */
export class CredentialFileError extends Error {
  override readonly name = 'CredentialFileError';
}

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
    throw new CredentialFileError(`cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { cause: err });
  }
}

export async function loadCredentials(files: CredentialFiles): Promise<LoadedCredentials> {
  if ((files.cert === undefined) !== (files.key === undefined)) throw new CredentialFileError('cert and key must be given together');
  if (files.apiKeyFile !== undefined && files.cert !== undefined) {
    // The daemon lets a certificate decide and ignores the key: sending both hides which one acts.
    throw new CredentialFileError('give either cert and key or apiKeyFile, not both');
  }
  const [ca, cert, key] = await Promise.all([
    read(files.ca, 'CA bundle'),
    files.cert === undefined ? undefined : read(files.cert, 'client certificate'),
    files.key === undefined ? undefined : read(files.key, 'client key'),
  ]);
  const token = files.apiKeyFile === undefined ? undefined : readApiKeyFile(files.apiKeyFile);
  return { credentials: tlsCredentials({ ca, cert, key }), metadata: token ? { authorization: `Bearer ${token}` } : {} };
}

/**
 * The API key in `file`: its first line, trimmed. A file others can read is refused (as ssh
 * refuses such a key): the key acts with its owner's permissions.
 */
export function readApiKeyFile(file: string): string {
  let text: string;
  try {
    if ((statSync(file).mode & 0o007) !== 0) throw new CredentialFileError(`API key file ${file} is readable by others: chmod 600 it`);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if (err instanceof CredentialFileError) throw err;
    throw new CredentialFileError(`cannot read API key file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  const key = text.split('\n')[0]?.trim() ?? '';
  if (key === '') throw new CredentialFileError(`API key file ${file} is empty`);
  return key;
}
