// grpc.health.v1 and /readyz probes for e2e tests.
import { loadPackageDefinition, type Client, type ServiceClientConstructor, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { credentialsFor, type RunningDaemon } from './daemon.js';

interface HealthClient extends Client {
  Check(request: { service: string }, callback: (err: ServiceError | null, response?: { status: string }) => void): void;
}

export function serviceConstructor(proto: string, path: string[], keepCase = false): ServiceClientConstructor {
  let node: unknown = loadPackageDefinition(loadSync(proto, { keepCase, longs: String, enums: String, defaults: true, oneofs: true }));
  for (const key of path) node = (node as Record<string, unknown>)[key];
  return node as ServiceClientConstructor;
}

/** grpc health status of `service` ('' = the whole server), checked without a client certificate. */
export async function grpcHealth(daemon: Pick<RunningDaemon, 'grpcAddress' | 'pki'>, service = ''): Promise<string> {
  const Health = serviceConstructor(healthProtoPath, ['grpc', 'health', 'v1', 'Health']);
  const client = new Health(daemon.grpcAddress, await credentialsFor(daemon.pki, null)) as unknown as HealthClient;
  try {
    return await new Promise<string>((resolve, reject) => {
      client.Check({ service }, (err, value) => (err ? reject(err) : resolve(value?.status ?? 'UNKNOWN')));
    });
  } finally {
    client.close();
  }
}

export async function readyz(daemon: Pick<RunningDaemon, 'httpAddress'>): Promise<number> {
  const response = await fetch(`http://${daemon.httpAddress}/readyz`);
  await response.text();
  return response.status;
}
