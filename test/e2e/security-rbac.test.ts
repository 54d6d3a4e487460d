// End-to-end RBAC table, generated from the proto: every RPC of every service, called
// with an empty request by a principal of each built-in role (and one without roles).
// The expectation comes from the same policy option and role table the daemon uses.
import { status as Status, type Client } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authorize } from '../../src/authz/decide.js';
import { BUILTIN_ROLES } from '../../src/authz/roles.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { RPCS, type Rpc } from '../support/rpcs.js';
import { auditRecords, clientFor, rawClientFor, rawUnary, startDaemon, type ClientPem, type RunningDaemon } from '../support/daemon.js';
import { auditRecord, issueClientFor, metricSum, metricsText, rawServerStream, traceIdOf } from '../support/security.js';

const ROLES = ['admin', 'operator', 'developer', 'monitor', 'viewer'] as const;
const NOBODY = 'spiffe://debvisor/rbac/nobody';
const principalOf = (role: string) => `spiffe://debvisor/rbac/${role}`;


function allowedFor(role: string, rpc: Rpc): boolean {
  const definition = BUILTIN_ROLES.get(role);
  if (!definition) throw new Error(`no role ${role}`);
  return rpc.anyAuthenticated || authorize({ roles: [definition], required: rpc.permission }).allowed;
}

let daemon: RunningDaemon;
const raw = new Map<string, Client>();
/** Trace ids of the denied calls, to check their audit records at the end. */
const denials: { traceId: string; principal: string; roles: string[]; rpc: Rpc }[] = [];

beforeAll(async () => {
  // 270+ calls in a few seconds: far above every default rate limit.
  const limits = Object.fromEntries(ROLES.map((role) => [role, 1_000_000]));
  daemon = await startDaemon({ config: { rate_limit: { per_role_per_minute: limits, default_per_minute: 1_000_000, global_per_minute: 10_000_000 } } });
  const admin = await clientFor(AccessService, daemon);
  const identities: [string, ClientPem][] = [];
  for (const role of ROLES) {
    identities.push([role, await issueClientFor(daemon.pki, principalOf(role))]);
    await admin.bindRole({ principal: principalOf(role), roleName: role }, { timeoutMs: 5000 });
  }
  identities.push(['nobody', await issueClientFor(daemon.pki, NOBODY)]);
  admin.close();
  for (const [name, identity] of identities) raw.set(name, await rawClientFor(daemon, identity));
});

afterAll(async () => {
  for (const client of raw.values()) client.close();
  await daemon.cleanup();
});

async function call(who: string, rpc: Rpc): Promise<{ code: Status; details: string }> {
  const client = raw.get(who);
  if (!client) throw new Error(`no client for ${who}`);
  if (rpc.streaming) return rawServerStream(client, rpc.path, Buffer.alloc(0));
  const result = await rawUnary(client, rpc.path, Buffer.alloc(0));
  return { code: result.status.code, details: result.status.details };
}

it('the table covers every RPC of the eight services', () => {
  expect(new Set(RPCS.map((r) => r.path.split('/')[1])).size).toBe(8);
  expect(RPCS.length).toBeGreaterThanOrEqual(45);
  expect(RPCS.some((r) => r.streaming)).toBe(true);
});

describe.each(ROLES)('role %s', (role) => {
  it.each(RPCS.map((rpc) => [rpc.path, rpc] as const))('%s', async (_path, rpc) => {
    const result = await call(role, rpc);
    // Authentication and rate limits must never be what decides here, nor a crash.
    expect([Status.UNAUTHENTICATED, Status.RESOURCE_EXHAUSTED, Status.INTERNAL, Status.UNKNOWN]).not.toContain(result.code);
    if (allowedFor(role, rpc)) {
      expect(result.code, `${role} must be allowed ${rpc.permission}: ${result.details}`).not.toBe(Status.PERMISSION_DENIED);
    } else {
      expect(result.code, `${role} must be denied ${rpc.permission}`).toBe(Status.PERMISSION_DENIED);
      expect(result.details).toContain(`permission denied: ${rpc.path} requires ${rpc.permission}`);
      denials.push({ traceId: traceIdOf(result), principal: principalOf(role), roles: [role], rpc });
    }
  });
});

describe('a principal with a valid certificate but no roles', () => {
  it.each(RPCS.filter((rpc) => rpc.anyAuthenticated).map((rpc) => [rpc.path, rpc] as const))('may call %s, declared open to every authenticated caller', async (_path, rpc) => {
    const result = await call('nobody', rpc);
    // CreateUserSession is open to any caller acting for a user: without the impersonate-user header its handler refuses.
    const expected = rpc.path.endsWith('/CreateUserSession') ? Status.FAILED_PRECONDITION : Status.OK;
    expect(result.code, result.details).toBe(expected);
  });

  it.each(RPCS.filter((rpc) => !rpc.anyAuthenticated).map((rpc) => [rpc.path, rpc] as const))('is denied %s', async (_path, rpc) => {
    const result = await call('nobody', rpc);
    expect(result.code).toBe(Status.PERMISSION_DENIED);
    expect(result.details).toContain(`requires ${rpc.permission}`);
    denials.push({ traceId: traceIdOf(result), principal: NOBODY, roles: [], rpc });
  });
});

describe('audit and metrics', () => {
  it('every denial is an AUTHZ_DENIED record naming the principal, its roles and the method', async () => {
    expect(denials.length).toBeGreaterThan(RPCS.length);
    // Wait for the last one; the batch before it is then on disk too.
    await auditRecord(daemon, (r) => r.type === 'AUTHZ_DENIED' && r.trace_id === denials[denials.length - 1]?.traceId);
    const byTrace = new Map(auditRecords(daemon).filter((r) => r.type === 'AUTHZ_DENIED').map((r) => [r.trace_id, r]));
    const problems: string[] = [];
    for (const denial of denials) {
      const record = byTrace.get(denial.traceId);
      const principal = record?.principal as { id?: string; roles?: string[] } | undefined;
      if (!record) problems.push(`${denial.principal} ${denial.rpc.path}: no AUTHZ_DENIED record`);
      else if (record.method !== denial.rpc.path || record.decision !== 'deny' || record.reason !== 'not_granted') problems.push(`${denial.rpc.path}: ${JSON.stringify(record)}`);
      else if (principal?.id !== denial.principal || JSON.stringify(principal.roles) !== JSON.stringify(denial.roles)) problems.push(`${denial.rpc.path}: principal ${JSON.stringify(principal)}`);
    }
    expect(problems).toEqual([]);
  });

  it('counts the denials in authz_denials_total', async () => {
    const metrics = await metricsText(daemon);
    expect(metricSum(metrics, 'authz_denials_total')).toBe(denials.length);
    expect(metricSum(metrics, 'authz_denials_total', { principal: NOBODY, permission: 'access:role:list' })).toBe(1);
  });
});
