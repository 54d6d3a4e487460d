// End-to-end: the real daemon (dist/main.js) over mutual TLS, one daemon for the file.
import { X509Certificate } from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import {
  status as Status,
  Metadata,
  type Client,
  type ClientDuplexStream,
  type ServiceError,
} from '@grpc/grpc-js';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessService, PrincipalKind } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationService } from '../../src/gen/debvisor/v1/operation_pb.js';
import { API_SERVICES } from '../../src/services/registry.js';
import {
  REPO_ROOT,
  adminPem,
  clientFor,
  credentialsFor,
  rawClientFor,
  rawUnary,
  startDaemon,
  type ClientPem,
  type PemFiles,
  type RunningDaemon,
  auditRecords,
} from '../support/daemon.js';
import { grpcHealth, serviceConstructor } from '../support/health.js';
import { writeRefusedCertificates, type CertFixture, type RefusedCertificates } from '../support/pki-fixtures.js';

const ADMIN = 'spiffe://debvisor/admin/admin';
const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';
const REFLECTION_PROTO = join(REPO_ROOT, 'proto/grpc/reflection/v1/reflection.proto');
const DEBVISOR_SERVICES = [
  'debvisor.v1.AccessService',
  'debvisor.v1.NodeService',
  'debvisor.v1.VmService',
  'debvisor.v1.MigrationService',
  'debvisor.v1.StorageService',
  'debvisor.v1.OperationService',
];

let daemon: RunningDaemon;
let admin: PemFiles;
let refused: RefusedCertificates;
let fixturesDir: string;
const clients: { close(): void }[] = [];

beforeAll(async () => {
  // Generous per-principal limits: several tests fire every RPC at once, and a fast machine refills little in between.
  daemon = await startDaemon({ config: { rate_limit: { per_role_per_minute: { admin: 100_000 } } } });
  admin = await adminPem(daemon.pki);
  fixturesDir = await mkdtemp(join(tmpdir(), 'rpcd-e2e-fixtures-'));
  refused = await writeRefusedCertificates(daemon.pki, fixturesDir);
});

afterAll(async () => {
  for (const client of clients) client.close();
  await daemon.cleanup();
  await rm(fixturesDir, { recursive: true, force: true });
});

async function access(identity?: ClientPem | null) {
  const client = await clientFor(AccessService, daemon, identity);
  clients.push(client);
  return client;
}

async function raw(identity?: ClientPem | null): Promise<Client> {
  const client = await rawClientFor(daemon, identity);
  clients.push(client);
  return client;
}

function pem(fixture: CertFixture): ClientPem {
  return { cert: fixture.cert, key: fixture.key };
}

/** The call's failure; fails the test if the call succeeds. */
async function rejection(call: Promise<unknown>): Promise<ServiceError> {
  try {
    await call;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error('call succeeded but must have been refused');
}

function trailer(err: ServiceError, key: string): string | undefined {
  const value = err.metadata.get(key)[0];
  return typeof value === 'string' ? value : undefined;
}

describe('authentication', () => {
  it('WhoAmI with the dev admin certificate names the admin principal', async () => {
    const client = await access();
    const me = await client.whoAmI({}, { timeoutMs: 5000 });
    const cert = new X509Certificate(admin.cert);
    expect(me.principalId).toBe(ADMIN);
    expect(me.kind).toBe(PrincipalKind.CERTIFICATE);
    expect(me.authMethod).toBe('mtls');
    expect(me.certFingerprintSha256).toBe(cert.fingerprint256.replaceAll(':', '').toLowerCase());
    expect(me.certFingerprintSha256).toMatch(/^[0-9a-f]{64}$/);
    expect(me.certNotAfter).toBeDefined();
    expect(timestampDate(me.certNotAfter!).getTime()).toBe(cert.validToDate.getTime());
    expect(me.sourceAddress).toContain('127.0.0.1');
  });

  // The port requests but does not require a client certificate, so the TLS
  // handshake with any certificate succeeds and the identity step refuses the call.
  it('refuses a client certificate from another CA with UNAUTHENTICATED', async () => {
    const err = await rejection((await access(pem(refused.foreignClient))).whoAmI({}, { timeoutMs: 5000 }));
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    expect(err.details).toContain('authentication required');
    expect(err.details).toMatch(/trace_id=/);
  });

  it('refuses a self-signed certificate naming the admin principal with UNAUTHENTICATED', async () => {
    const err = await rejection((await access(pem(refused.selfSignedAdmin))).whoAmI({}, { timeoutMs: 5000 }));
    expect(err.code).toBe(Status.UNAUTHENTICATED);
  });

  it('refuses dev-CA certificates lacking clientAuth or past their expiry with UNAUTHENTICATED', async () => {
    const noClientAuth = await rejection((await access(pem(refused.serverAuthOnly))).whoAmI({}, { timeoutMs: 5000 }));
    expect(noClientAuth.code).toBe(Status.UNAUTHENTICATED);
    const expired = await rejection((await access(pem(refused.expired))).whoAmI({}, { timeoutMs: 5000 }));
    expect(expired.code).toBe(Status.UNAUTHENTICATED);
    // The reason goes to the daemon's log (with the trace id), never to the client.
    expect(noClientAuth.details).not.toContain('clientAuth');
    expect(expired.details).not.toContain('validity');
    for (const err of [noClientAuth, expired]) {
      const traceId = /trace_id=([0-9a-f]{32})/.exec(err.details)?.[1];
      expect(traceId).toBeDefined();
      // The audit record is written in the background (reads are batched): allow it a moment.
      await vi.waitFor(() => {
        const record = auditRecords(daemon).find((r) => r.type === 'AUTH_FAILED' && r.trace_id === traceId);
        expect(record).toMatchObject({ method: WHOAMI, decision: 'deny' });
        expect(record?.reason).toMatch(/no verified client certificate/);
      });
    }
  });

  it('refuses a call without a client certificate, quoting a trace id in details and trailers', async () => {
    const err = await rejection((await access(null)).whoAmI({}, { timeoutMs: 5000 }));
    expect(err.code).toBe(Status.UNAUTHENTICATED);
    const match = /trace_id=([0-9a-f]{32})/.exec(err.details);
    expect(match).not.toBeNull();
    expect(trailer(err, 'x-request-id')).toBe(match![1]);
  });

  it('echoes a client-sent x-request-id in the trailers; a success without one carries none', async () => {
    const id = 'test-trace-12345678';
    const ok = await rawUnary(await raw(), WHOAMI, Buffer.alloc(0), { 'x-request-id': id });
    expect(ok.error).toBeUndefined();
    expect(ok.status.code).toBe(Status.OK);
    expect(ok.status.metadata.get('x-request-id')).toEqual([id]);
    const plain = await rawUnary(await raw(), WHOAMI, Buffer.alloc(0));
    expect(plain.status.code).toBe(Status.OK);
    expect(plain.status.metadata.get('x-request-id')).toEqual([]);

    const failed = await rejection((await access(null)).whoAmI({}, { timeoutMs: 5000, metadata: { 'x-request-id': id } }));
    expect(failed.code).toBe(Status.UNAUTHENTICATED);
    expect(trailer(failed, 'x-request-id')).toBe(id);
    expect(failed.details).toContain(`trace_id=${id}`);
  });
});

describe('request handling', () => {
  it('answers RESOURCE_EXHAUSTED to a 2 MiB request', async () => {
    const client = await access();
    const err = await rejection(client.createApiKey({ description: 'x'.repeat(2 * 1024 * 1024) }, { timeoutMs: 10_000 }));
    expect(err.code).toBe(Status.RESOURCE_EXHAUSTED);
    // Refused by the daemon's 1 MiB receive limit, not by the client.
    expect(err.details).toContain(`vs ${1024 * 1024}`);
  });

  it('answers UNIMPLEMENTED to an unknown method', async () => {
    const result = await rawUnary(await raw(), '/debvisor.v1.AccessService/NoSuchMethod', Buffer.alloc(0));
    expect(result.error?.code).toBe(Status.UNIMPLEMENTED);
  });

  it('implements every RPC the API declares (none answers UNIMPLEMENTED)', async () => {
    const client = await raw();
    const unary = API_SERVICES.flatMap((service) => service.methods.filter((m) => m.methodKind === 'unary').map((m) => `/${service.typeName}/${m.name}`));
    // Empty requests: most are refused by validation, but none may be missing.
    const results = await Promise.all(unary.map(async (path) => [path, (await rawUnary(client, path, Buffer.alloc(0))).error?.code] as const));
    expect(results.filter(([, code]) => code === Status.UNIMPLEMENTED || code === Status.INTERNAL)).toEqual([]);
    expect(unary.length).toBeGreaterThan(40);
  });

  it('answers INVALID_ARGUMENT, never INTERNAL, to a malformed protobuf body', async () => {
    const result = await rawUnary(await raw(), WHOAMI, Buffer.from([0xff, 0xff, 0xff]));
    expect(result.error?.code).toBe(Status.INVALID_ARGUMENT);
    expect(result.error?.details).toContain('not a valid protobuf message');
    expect(daemon.logs()).not.toContain('internal error in handler');
  });

  it('bounds an error that echoes a 64 KiB request value; the other calls on the channel are unaffected', async () => {
    const operations = await clientFor(OperationService, daemon);
    const access = await clientFor(AccessService, daemon);
    const huge = operations.getOperation({ operationId: 'o'.repeat(65_536) }, { timeoutMs: 30_000 }).then(
      () => undefined,
      (err: unknown) => err as ServiceError,
    );
    const others = Array.from({ length: 10 }, () => access.whoAmI({}, { timeoutMs: 30_000 }));
    const err = await huge;
    expect(err).toBeDefined();
    expect(err?.code).not.toBe(Status.INTERNAL);
    expect(err?.details.length).toBeLessThan(1024);
    expect(err?.details).toMatch(/trace_id=/);
    expect((await Promise.all(others)).every((me) => me.principalId === daemon.pki.adminPrincipal)).toBe(true);
    operations.close();
    access.close();
  });

  it('answers INVALID_ARGUMENT to an undecodable body on every RPC, also those naming a target resource', async () => {
    const client = await raw();
    // Field 1, length 5, but only two bytes follow: a truncated string.
    const truncated = Buffer.from([0x0a, 0x05, 0x61, 0x62]);
    const streamCode = (path: string) =>
      new Promise<number>((resolveCode) => {
        const call = client.makeServerStreamRequest<Buffer, Buffer>(path, (v) => v, (v) => v, truncated, new Metadata(), { deadline: Date.now() + 30_000 });
        call.on('data', () => undefined);
        call.on('error', (err: ServiceError) => {
          resolveCode(err.code);
        });
        call.on('end', () => {
          resolveCode(Status.OK);
        });
      });
    const unaryCode = async (path: string) => (await rawUnary(client, path, truncated)).error?.code;
    // The suite's earlier calls may have spent the admin's rate budget: a refused call waits its turn.
    const codeOf = (path: string, call: (path: string) => Promise<number | undefined>) =>
      vi.waitFor(async () => {
        const code = await call(path);
        if (code === Status.RESOURCE_EXHAUSTED) throw new Error(`${path}: rate limited, retrying`);
        return code;
      }, { timeout: 120_000, interval: 250 });
    const results: (readonly [string, number | undefined])[] = [];
    for (const service of API_SERVICES) {
      for (const method of service.methods) {
        const path = `/${service.typeName}/${method.name}`;
        if (method.methodKind === 'unary') results.push([path, await codeOf(path, unaryCode)]);
        else if (method.methodKind === 'server_streaming') results.push([path, await codeOf(path, streamCode)]);
      }
    }
    expect(results.filter(([, code]) => code !== Status.INVALID_ARGUMENT)).toEqual([]);
    expect(results.map(([path]) => path)).toEqual(expect.arrayContaining(['/debvisor.v1.VmService/GetVm', '/debvisor.v1.OperationService/WatchOperation']));
    expect(daemon.logs()).not.toContain('panic in call');
  });
});

interface ReflectionResponse {
  list_services_response?: { service: { name: string }[] };
  error_response?: { error_code: number; error_message: string };
}

interface ReflectionClient extends Client {
  ServerReflectionInfo(): ClientDuplexStream<{ list_services: string }, ReflectionResponse>;
}

describe('health, reflection and HTTP', () => {
  it('grpc.health.v1.Health/Check "" is SERVING without a client certificate', async () => {
    expect(await grpcHealth(daemon)).toBe('SERVING');
    expect(await grpcHealth(daemon, 'debvisor.v1.AccessService')).toBe('SERVING');
  });

  it('reflection lists all six debvisor services', async () => {
    const Reflection = serviceConstructor(REFLECTION_PROTO, ['grpc', 'reflection', 'v1', 'ServerReflection'], true);
    const client = new Reflection(daemon.grpcAddress, await credentialsFor(daemon.pki)) as unknown as ReflectionClient;
    clients.push(client);
    const stream = client.ServerReflectionInfo();
    const response = await new Promise<ReflectionResponse>((resolve, reject) => {
      stream.once('data', resolve);
      stream.once('error', reject);
      stream.write({ list_services: '' });
    });
    stream.end();
    const names = (response.list_services_response?.service ?? []).map((s) => s.name);
    expect(names).toEqual(expect.arrayContaining(DEBVISOR_SERVICES));
    expect(names).toContain('grpc.health.v1.Health');

    const grpcurl = await which('grpcurl');
    if (grpcurl) {
      const { stdout } = await promisify(execFile)(grpcurl, [
        '-cacert', daemon.pki.caCert,
        '-cert', daemon.pki.adminCert,
        '-key', daemon.pki.adminKey,
        daemon.grpcAddress,
        'list',
      ]);
      expect(stdout.split('\n')).toEqual(expect.arrayContaining(DEBVISOR_SERVICES));
    }
  });

  it('serves /metrics, /healthz and /readyz', async () => {
    const base = `http://${daemon.httpAddress}`;
    const metrics = await fetch(`${base}/metrics`);
    expect(metrics.status).toBe(200);
    const body = await metrics.text();
    expect(body).toContain('rpc_requests_total');
    expect(body).toContain('process_cpu_seconds_total');
    // Earlier calls in this file were counted with their final status.
    expect(body).toMatch(/rpc_requests_total\{service="debvisor.v1.AccessService",method="WhoAmI",status="UNAUTHENTICATED"\} \d+/);
    const healthz = await fetch(`${base}/healthz`);
    expect(healthz.status).toBe(200);
    await healthz.text();
    const readyz = await fetch(`${base}/readyz`);
    expect(readyz.status).toBe(200);
    await readyz.text();
  });

  it('/metrics passes promtool check metrics, with the alerts\' series present from the start', async () => {
    const body = await (await fetch(`http://${daemon.httpAddress}/metrics`)).text();
    const check = spawnSync('promtool', ['check', 'metrics'], { input: body, encoding: 'utf8' });
    expect(check.error).toBeUndefined();
    expect(`${check.stdout}${check.stderr}`.trim()).toBe('');
    expect(check.status).toBe(0);
    expect(body).toMatch(/^auth_attempts_total\{method="api_key",result="failure"\} \d+$/m);
    expect(body).toMatch(/^rate_limit_violations_total\{principal="global"\} \d+$/m);
    expect(body).toMatch(/^component_ready\{component="store"\} 1$/m);
    expect(body).toMatch(/^debvisor_build_info\{version="\d+\.\d+\.\d+[^"]*",node_version="[\d.]+"\} 1$/m);
  });
});

async function which(command: string): Promise<string | undefined> {
  try {
    const { stdout } = await promisify(execFile)('sh', ['-c', `command -v ${command}`]);
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}
