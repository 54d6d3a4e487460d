// The TypeScript SDK: `import { connect } from 'debvisor-rpcd/client'`. Typed async clients for
// every service, deadlines, retries of UNAVAILABLE where a retry is safe, waiting for
// operations, credentials from files or a debvisorctl context (ctl.yaml) and typed error details. Imports no server code
// (test/architecture/client-imports.test.ts); the generated messages and enums are under
// 'debvisor-rpcd/gen/…'.
import type { ChannelCredentials, ClientOptions } from '@grpc/grpc-js';
import type { GenService, GenServiceMethods } from '@bufbuild/protobuf/codegenv2';
import { AccessService } from '../gen/debvisor/v1/access_pb.js';
import { EventService } from '../gen/debvisor/v1/event_pb.js';
import { ImageService } from '../gen/debvisor/v1/image_pb.js';
import { MigrationService } from '../gen/debvisor/v1/migration_pb.js';
import { NodeService } from '../gen/debvisor/v1/node_pb.js';
import { OperationService, type Operation } from '../gen/debvisor/v1/operation_pb.js';
import { StorageService } from '../gen/debvisor/v1/storage_pb.js';
import { VmService } from '../gen/debvisor/v1/vm_pb.js';
import { createClient, type CallMetadata, type ClientBehaviour, type TypedClient } from './client.js';
import { loadCredentials, type CredentialFiles } from './credentials.js';
import { waitForOperation, type WaitForOptions } from './operations.js';
import { DEFAULT_RETRY, type RetryOptions } from './retry.js';

export { createClient, tlsCredentials, type CallMetadata, type CallOptions, type ClientBehaviour, type Connection, type TypedClient } from './client.js';
export { CredentialFileError, loadCredentials, readApiKeyFile, type CredentialFiles, type LoadedCredentials } from './credentials.js';
export { contextCredentials, ctlConfigPath, loadCtlConfig, type CtlConfig, type CtlContext } from './contexts.js';
export { errorDetails, type ErrorDetails } from './details.js';
export { isDone, waitForOperation, type OperationClient, type WaitForOptions } from './operations.js';
export { DEFAULT_RETRY, mutates, retryable, type RetryOptions } from './retry.js';

type MethodsOf<T> = T extends GenService<infer S extends GenServiceMethods> ? S : never;
type ClientOf<T> = TypedClient<MethodsOf<T>>;

/** A unary call's deadline when the call sets no timeoutMs. */
export const DEFAULT_TIMEOUT_MS = 30_000;

export interface ConnectOptions {
  /** host:port of debvisor-rpcd. */
  readonly address: string;
  /** Credential files, or ready channel credentials (with `metadata` for an API key). */
  readonly credentials: CredentialFiles | ChannelCredentials;
  /** Sent with every call. */
  readonly metadata?: CallMetadata;
  /** Retries of UNAVAILABLE (reads, and mutations with a request_id); false: none. Default {@link DEFAULT_RETRY}. */
  readonly retry?: RetryOptions | false;
  /** Default {@link DEFAULT_TIMEOUT_MS}; streams have no default deadline. */
  readonly defaultTimeoutMs?: number;
  /** grpc-js channel options. */
  readonly channelOptions?: ClientOptions;
}

export interface DebvisorClient {
  readonly access: ClientOf<typeof AccessService>;
  readonly vms: ClientOf<typeof VmService>;
  readonly storage: ClientOf<typeof StorageService>;
  readonly nodes: ClientOf<typeof NodeService>;
  readonly migrations: ClientOf<typeof MigrationService>;
  readonly operations: ClientOf<typeof OperationService>;
  readonly events: ClientOf<typeof EventService>;
  readonly images: ClientOf<typeof ImageService>;
  /** The operation once it has ended; `onProgress` sees every change. */
  waitFor(operation: Operation, options?: WaitForOptions): Promise<Operation>;
  close(): void;
}

function isCredentialFiles(credentials: ConnectOptions['credentials']): credentials is CredentialFiles {
  return typeof (credentials as CredentialFiles).ca === 'string';
}

export async function connect(options: ConnectOptions): Promise<DebvisorClient> {
  const loaded = isCredentialFiles(options.credentials) ? await loadCredentials(options.credentials) : { credentials: options.credentials, metadata: {} };
  const connection = { address: options.address, credentials: loaded.credentials, ...(options.channelOptions ? { options: options.channelOptions } : {}) };
  const behaviour: ClientBehaviour = {
    ...(options.retry === false ? {} : { retry: options.retry ?? DEFAULT_RETRY }),
    defaultTimeoutMs: options.defaultTimeoutMs ?? DEFAULT_TIMEOUT_MS,
    metadata: { ...loaded.metadata, ...options.metadata },
  };
  const clients = {
    access: createClient(AccessService, connection, behaviour),
    vms: createClient(VmService, connection, behaviour),
    storage: createClient(StorageService, connection, behaviour),
    nodes: createClient(NodeService, connection, behaviour),
    migrations: createClient(MigrationService, connection, behaviour),
    operations: createClient(OperationService, connection, behaviour),
    events: createClient(EventService, connection, behaviour),
    images: createClient(ImageService, connection, behaviour),
  };
  return {
    ...clients,
    waitFor: (operation, waitOptions) => waitForOperation(clients.operations, operation, waitOptions),
    close: () => {
      for (const client of Object.values(clients)) client.close();
    },
  };
}
