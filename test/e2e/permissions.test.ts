// Each RPC of VmService, NodeService and MigrationService enforces exactly its own permission:
// an API key holding only that permission gets past RBAC (whatever the handler then says about the
// empty request), and a key holding every OTHER permission of the three services is denied,
// naming the permission. All calls run in parallel against one real daemon.
// (security-rbac.test.ts checks the built-in roles against every RPC; this checks that no RPC
// accepts a neighbour's permission.)
import { status as Status, type Client } from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { MigrationService } from '../../src/gen/debvisor/v1/migration_pb.js';
import { NodeService } from '../../src/gen/debvisor/v1/node_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { methodPath } from '../../src/rpc/policy.js';
import { compilePolicy } from '../../src/rpc/policy.js';
import { clientFor, rawClientFor, rawUnary, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { rawServerStream } from '../support/security.js';

const RPCS = [VmService, NodeService, MigrationService].flatMap((service) =>
  service.methods.map((method) => {
    const policy = compilePolicy(method);
    if (!policy) throw new Error(`${methodPath(method)} has no rpc_policy`);
    return { path: methodPath(method), permission: policy.permission, streaming: method.methodKind === 'server_streaming' };
  }),
);
const PERMISSIONS = [...new Set(RPCS.map((rpc) => rpc.permission))];

let daemon: RunningDaemon;
let anonymous: Client;

beforeAll(async () => {
  daemon = await startDaemon({
    // Nothing reachable behind the handlers: what matters is only whether RBAC let the call through.
    env: { DEBVISOR_RPCD_LIBVIRT_URI: 'test+unix:///default?socket=/nonexistent/libvirt-sock' },
    config: { rate_limit: { per_role_per_minute: { admin: 1_000_000 }, default_per_minute: 1_000_000, global_per_minute: 10_000_000 } },
  });
  anonymous = await rawClientFor(daemon, null);
});

afterAll(async () => {
  anonymous.close();
  await daemon.cleanup();
});

async function keyWith(permissions: string[]): Promise<string> {
  const access = await clientFor(AccessService, daemon);
  try {
    const created = await access.createApiKey({ description: 'permission table', permissions }, { timeoutMs: 15_000 });
    return created.secret;
  } finally {
    access.close();
  }
}

async function call(rpc: (typeof RPCS)[number], secret: string): Promise<{ code: Status; details: string }> {
  const metadata = { authorization: `Bearer ${secret}` };
  if (rpc.streaming) return rawServerStream(anonymous, rpc.path, Buffer.alloc(0), metadata);
  const result = await rawUnary(anonymous, rpc.path, Buffer.alloc(0), metadata, 15_000);
  return { code: result.status.code, details: result.status.details };
}

it('covers every RPC of the three services', () => {
  expect(RPCS.length).toBeGreaterThanOrEqual(17);
  expect(RPCS.filter((rpc) => rpc.path.startsWith('/debvisor.v1.MigrationService/'))).toHaveLength(3);
});

it('each RPC is allowed past RBAC with its permission and denied without it, in parallel', async () => {
  const problems: string[] = [];
  await Promise.all(
    RPCS.map(async (rpc) => {
      const [only, others] = await Promise.all([keyWith([rpc.permission]), keyWith(PERMISSIONS.filter((p) => p !== rpc.permission))]);
      const [allowed, denied] = await Promise.all([call(rpc, only), call(rpc, others)]);
      if (allowed.code === Status.PERMISSION_DENIED || allowed.code === Status.UNAUTHENTICATED) problems.push(`${rpc.path} with ${rpc.permission}: ${Status[allowed.code]} ${allowed.details}`);
      if (denied.code !== Status.PERMISSION_DENIED || !denied.details.includes(`requires ${rpc.permission}`)) {
        problems.push(`${rpc.path} without ${rpc.permission}: ${Status[denied.code]} ${denied.details}`);
      }
    }),
  );
  expect(problems).toEqual([]);
});
