// A certificate acting for its users (issue 21), against the real daemon over real mTLS:
// who may impersonate, what the user may then do (its rights intersected with the
// certificate's, for every RPC and every pair of built-in roles), how bad headers are
// refused, and what the audit log records.
import { status as Status, type Client } from '@grpc/grpc-js';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { authorize } from '../../src/authz/decide.js';
import { BUILTIN_ROLES } from '../../src/authz/roles.js';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { AccessService, PrincipalKind } from '../../src/gen/debvisor/v1/access_pb.js';
import { QuotaResource, ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { RPCS, type Rpc } from '../support/rpcs.js';
import { join } from 'node:path';
import { readHmacKeySync } from '../../src/audit/key.js';
import { auditFilesInOrder, verifyAuditFiles } from '../../src/audit/verify.js';
import { auditRecords, clientFor, rawClientFor, rawUnary, type ClientPem, type RunningDaemon } from '../support/daemon.js';
import { auditRecord, codeOf, issueClientFor, rawServerStream, rejection, traceIdOf } from '../support/security.js';
import type { TypedClient } from '../../src/client/client.js';
import { startTestingDaemon } from '../support/testing.js';

const ROLES = ['admin', 'operator', 'developer', 'monitor', 'viewer'] as const;
/** A custom role that grants impersonation and nothing else: bound to every panel beside its built-in role. */
const IMPERSONATOR_ROLE = { name: 'impersonator', description: 'acts for users', permissions: ['access:impersonate'], denyPermissions: [] };
const panelOf = (role: string) => `spiffe://debvisor/panel/${role}`;
const userOf = (role: string) => `u-${role}`;


const roleAllows = (role: string | undefined, permission: string) => {
  const definition = role === undefined ? undefined : BUILTIN_ROLES.get(role);
  return definition !== undefined && authorize({ roles: [definition], required: permission }).allowed;
};

/** Echo acting for `user`: 'OK', or the refusal as `CODE details`. */
async function echoAs(testing: TypedClient<typeof TestingService.method>, user: string): Promise<string> {
  const { code, details } = await codeOf(testing.echo({ text: 'x' }, { metadata: { 'impersonate-user': user }, timeoutMs: 10_000 }));
  return code === Status.OK ? 'OK' : `${Status[code]} ${details}`;
}

let daemon: RunningDaemon;
let admin: Awaited<ReturnType<typeof clientFor<typeof AccessService.method>>>;
const panels = new Map<string, ClientPem>();
const raw = new Map<string, Client>();
let noImpersonate: ClientPem;

beforeAll(async () => {
  // Every role far above what the tests send, except two: `limited` (users) and `small-panel`
  // (a certificate), whose limits allow a burst of one and two calls (src/ratelimit/limiter.ts).
  const limits: Record<string, number> = Object.fromEntries([...ROLES, 'impersonator', 'no-rights', 'quota-user', 'echo', 'ci-panel'].map((role) => [role, 1_000_000]));
  limits.limited = 10;
  limits['small-panel'] = 20;
  daemon = await startTestingDaemon({
    config: {
      auth: { impersonation: { enabled: true }, default_bindings: { 'group:ops': ['operator'] } },
      rate_limit: { per_role_per_minute: limits, default_per_minute: 3, global_per_minute: 10_000_000 },
    },
  });
  admin = await clientFor(AccessService, daemon);
  await admin.putRole({ role: IMPERSONATOR_ROLE }, { timeoutMs: 5000 });
  // The user without rights holds a role that grants nothing (and lifts it out of the small default rate limit).
  await admin.putRole({ role: { name: 'no-rights', description: 'nothing', permissions: [], denyPermissions: [] } }, { timeoutMs: 5000 });
  await admin.bindRole({ principal: 'user:u-nobody', roleName: 'no-rights' }, { timeoutMs: 5000 });
  for (const role of ROLES) {
    const pem = await issueClientFor(daemon.pki, panelOf(role));
    panels.set(role, pem);
    raw.set(role, await rawClientFor(daemon, pem));
    await admin.bindRole({ principal: panelOf(role), roleName: role }, { timeoutMs: 5000 });
    await admin.bindRole({ principal: panelOf(role), roleName: IMPERSONATOR_ROLE.name }, { timeoutMs: 5000 });
    await admin.bindRole({ principal: `user:${userOf(role)}`, roleName: role }, { timeoutMs: 5000 });
  }
  noImpersonate = await issueClientFor(daemon.pki, 'spiffe://debvisor/panel/plain');
  await admin.bindRole({ principal: 'spiffe://debvisor/panel/plain', roleName: 'operator' }, { timeoutMs: 5000 });
});

afterAll(async () => {
  for (const client of raw.values()) client.close();
  admin.close();
  await daemon.cleanup();
});

async function callAs(panel: string, user: string, rpc: Rpc, extra: Record<string, string> = {}): Promise<{ code: Status; details: string }> {
  const client = raw.get(panel);
  if (!client) throw new Error(`no client for ${panel}`);
  const headers = { 'impersonate-user': user, ...extra };
  if (rpc.streaming) return rawServerStream(client, rpc.path, Buffer.alloc(0), headers);
  const result = await rawUnary(client, rpc.path, Buffer.alloc(0), headers);
  return { code: result.status.code, details: result.status.details };
}

describe('effective rights: the user’s intersected with the impersonating certificate’s, for every RPC', () => {
  const users = [...ROLES.map((role) => [role, userOf(role)] as const), [undefined, 'u-nobody'] as const];
  const pairs = ROLES.flatMap((panel) => users.map(([userRole, user]) => [panel, userRole ?? 'none', user, userRole] as const));
  it.each(pairs)('panel %s acting for a user with role %s', async (panel, _label, user, userRole) => {
    const problems: string[] = [];
    for (const rpc of RPCS) {
      const result = await callAs(panel, user, rpc);
      if ([Status.UNAUTHENTICATED, Status.RESOURCE_EXHAUSTED, Status.INTERNAL, Status.UNKNOWN].includes(result.code)) {
        problems.push(`${rpc.path}: ${Status[result.code]} ${result.details}`);
        continue;
      }
      const allowed = rpc.anyAuthenticated || (roleAllows(userRole, rpc.permission) && roleAllows(panel, rpc.permission));
      if (allowed && result.code === Status.PERMISSION_DENIED) problems.push(`${rpc.path} (${rpc.permission}) must be allowed: ${result.details}`);
      if (!allowed && result.code !== Status.PERMISSION_DENIED) problems.push(`${rpc.path} (${rpc.permission}) must be denied, got ${Status[result.code]}`);
    }
    expect(problems).toEqual([]);
  });
});

describe('who may impersonate', () => {
  it('a certificate without access:impersonate is refused, never served as itself', async () => {
    const access = await clientFor(AccessService, daemon, noImpersonate);
    const err = await rejection(access.whoAmI({}, { metadata: { 'impersonate-user': 'u-viewer' }, timeoutMs: 5000 }));
    access.close();
    expect(err.code).toBe(Status.PERMISSION_DENIED);
    expect(err.details).toContain('access:impersonate');
    const record = await auditRecord(daemon, (r) => r.type === 'AUTHZ_DENIED' && r.trace_id === traceIdOf(err));
    expect(record.principal).toMatchObject({ id: 'spiffe://debvisor/panel/plain' });
    expect(record.reason).toContain('user:u-viewer');
  });

  it('an API key can never impersonate, even one whose owner may: PERMISSION_DENIED, audited SUSPICIOUS', async () => {
    const created = await admin.createApiKey({ description: 'impersonation attempt', permissions: ['*'] }, { timeoutMs: 5000 });
    const access = await clientFor(AccessService, daemon, null);
    const err = await rejection(access.whoAmI({}, { metadata: { authorization: `Bearer ${created.secret}`, 'impersonate-user': 'u-admin' }, timeoutMs: 5000 }));
    access.close();
    expect(err.code).toBe(Status.PERMISSION_DENIED);
    expect(err.details).toContain('API keys cannot impersonate');
    const record = await auditRecord(daemon, (r) => r.type === 'SUSPICIOUS' && r.trace_id === traceIdOf(err));
    expect(record.reason).toContain('API key');
  });

  it('bad headers are INVALID_ARGUMENT naming the header', async () => {
    const access = await clientFor(AccessService, daemon, panels.get('operator'));
    const cases: [Record<string, string>, string][] = [
      [{ 'impersonate-user': 'Alice' }, 'impersonate-user'],
      [{ 'impersonate-user': 'a'.repeat(65) }, 'impersonate-user'],
      [{ 'impersonate-user': 'bob;rm -rf' }, 'impersonate-user'],
      [{ 'impersonate-group': 'ops' }, 'impersonate-user'],
      [{ 'impersonate-user': 'bob', 'impersonate-group': 'Ops' }, 'impersonate-group'],
      [{ 'impersonate-user': 'bob', 'impersonate-group': Array.from({ length: 33 }, (_, i) => `g${i}`).join(',') }, 'impersonate-group'],
      [{ 'impersonate-user': 'bob', 'impersonate-reason': 'x'.repeat(257) }, 'impersonate-reason'],
    ];
    for (const [metadata, header] of cases) {
      const err = await rejection(access.whoAmI({}, { metadata, timeoutMs: 5000 }));
      expect(err.code, JSON.stringify(metadata)).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toContain(header);
      expect(traceIdOf(err)).toMatch(/^[0-9a-f]{32}$/);
    }
    access.close();
  });

  it('a role’s USER globs restrict whom a certificate may act for: ci-* yes, alice no', async () => {
    await admin.putRole(
      { role: { name: 'ci-panel', description: 'acts for CI users only', permissions: ['access:impersonate', 'testing:echo'], denyPermissions: [], resourceGlobs: [{ kind: ResourceKind.USER, glob: 'ci-*' }] } },
      { timeoutMs: 5000 },
    );
    const panel = 'spiffe://debvisor/panel/ci';
    await admin.bindRole({ principal: panel, roleName: 'ci-panel' }, { timeoutMs: 5000 });
    await admin.bindRole({ principal: 'user:ci-runner', roleName: 'viewer' }, { timeoutMs: 5000 });
    const access = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, panel));
    const me = await access.whoAmI({}, { metadata: { 'impersonate-user': 'ci-runner' }, timeoutMs: 5000 });
    expect(me.principalId).toBe('user:ci-runner');
    const err = await rejection(access.whoAmI({}, { metadata: { 'impersonate-user': 'alice' }, timeoutMs: 5000 }));
    access.close();
    expect(err.code).toBe(Status.PERMISSION_DENIED);
    expect(err.details).toContain('acting for user alice requires access:impersonate');
    const record = await auditRecord(daemon, (r) => r.type === 'AUTHZ_DENIED' && r.trace_id === traceIdOf(err));
    expect(record.reason).toContain('outside_role_scope');
  });

  it('a daemon with impersonation disabled (the default) refuses the headers', async () => {
    const plain = await startTestingDaemon();
    try {
      const access = await clientFor(AccessService, plain);
      const err = await rejection(access.whoAmI({}, { metadata: { 'impersonate-user': 'alice' }, timeoutMs: 5000 }));
      access.close();
      expect(err.code).toBe(Status.PERMISSION_DENIED);
      expect(err.details).toContain('impersonation is disabled');
    } finally {
      await plain.cleanup();
    }
  });
});

describe('a user acted for', () => {
  it('WhoAmI names both identities; the groups bring their config bindings', async () => {
    const access = await clientFor(AccessService, daemon, panels.get('admin'));
    const me = await access.whoAmI({}, { metadata: { 'impersonate-user': 'carol', 'impersonate-group': 'ops,readers', 'impersonate-reason': 'ticket 42' }, timeoutMs: 5000 });
    access.close();
    expect(me.principalId).toBe('user:carol');
    expect(me.kind).toBe(PrincipalKind.USER);
    expect(me.roles).toEqual(['operator']);
    expect(me.permissions).toContain('vm:*');
    expect(me.permissions).not.toContain('*');
    expect(me.impersonation).toMatchObject({
      impersonatedBy: panelOf('admin'),
      impersonatorCertFingerprintSha256: expect.stringMatching(/^[0-9a-f]{64}$/) as unknown,
      groups: ['group:ops', 'group:readers'],
      reason: 'ticket 42',
    });
  });

  it('every audit record of the call carries the user, the impersonator with its fingerprint, the groups and the reason; audit verify passes', async () => {
    const access = await clientFor(AccessService, daemon, panels.get('operator'));
    const metadata = { 'impersonate-user': 'u-operator', 'impersonate-group': 'ops', 'impersonate-reason': 'rotate keys' };
    const created = await access.createApiKey({ description: 'made for a user', permissions: ['vm:list'] }, { metadata, timeoutMs: 5000 });
    const listed = await access.listApiKeys({}, { metadata, timeoutMs: 5000 });
    access.close();
    expect(listed.apiKeys.map((k) => k.keyId)).toContain(created.apiKey?.keyId);
    expect(created.apiKey?.owner).toBe('user:u-operator');
    const record = await auditRecord(daemon, (r) => r.type === 'CALL' && r.method === '/debvisor.v1.AccessService/CreateApiKey' && (r.principal as { impersonation_reason?: string }).impersonation_reason === 'rotate keys');
    expect(record.principal).toMatchObject({
      id: 'user:u-operator',
      kind: 'user',
      roles: ['operator'],
      groups: ['group:ops'],
      impersonated_by: { id: panelOf('operator'), cert_fingerprint: expect.stringMatching(/^[0-9a-f]{64}$/) as unknown, roles: ['impersonator', 'operator'] },
      impersonation_reason: 'rotate keys',
    });
    // The first impersonated call of each (certificate, user) pair is a SECURITY record.
    const security = auditRecords(daemon).filter((r) => r.type === 'SECURITY' && r.object === 'user:u-operator');
    expect(security.map((r) => r.reason)).toContainEqual(expect.stringContaining(`${panelOf('operator')} acts for user:u-operator`));
    // So is granting it: the binding of a role that holds access:impersonate.
    const granted = auditRecords(daemon).find((r) => r.type === 'SECURITY' && r.object === `principal:${panelOf('operator')}` && (r.details as { role?: string }).role === IMPERSONATOR_ROLE.name);
    expect(granted?.reason).toBe('role bound (grants access:impersonate)');
    // The log's batches are sealed as they are written: verify once the records above are on disk.
    const log = join(daemon.dir, 'audit', 'rpc-audit.log');
    const verified = verifyAuditFiles(auditFilesInOrder(log), readHmacKeySync(join(daemon.dir, 'audit', 'hmac.key')).key);
    expect(verified.ok, JSON.stringify(verified)).toBe(true);
  });

  it('a user never gets more than the certificate acting for it: no key with rights the panel lacks', async () => {
    const access = await clientFor(AccessService, daemon, panels.get('operator'));
    const err = await rejection(access.createApiKey({ description: 'too much', permissions: ['access:binding:create'] }, { metadata: { 'impersonate-user': 'u-admin' }, timeoutMs: 5000 }));
    access.close();
    expect(err.code).toBe(Status.PERMISSION_DENIED);
  });

  it('quotas are charged to the user: two users through one panel each exhaust their own', async () => {
    const testing = await clientFor(TestingService, daemon, panels.get('admin'));
    await admin.putRole({ role: { name: 'quota-user', description: '', permissions: ['testing:quota:consume'], denyPermissions: [] } }, { timeoutMs: 5000 });
    for (const user of ['q-one', 'q-two']) {
      await admin.bindRole({ principal: `user:${user}`, roleName: 'quota-user' }, { timeoutMs: 5000 });
      await admin.setQuota({ principal: `user:${user}`, resource: QuotaResource.SNAPSHOTS, limit: 2n }, { timeoutMs: 5000 });
    }
    const consume = async (user: string) => (await codeOf(testing.consumeTestQuota({}, { metadata: { 'impersonate-user': user }, timeoutMs: 10_000 }))).code;
    expect([await consume('q-one'), await consume('q-one'), await consume('q-one')]).toEqual([Status.OK, Status.OK, Status.RESOURCE_EXHAUSTED]);
    expect([await consume('q-two'), await consume('q-two'), await consume('q-two')]).toEqual([Status.OK, Status.OK, Status.RESOURCE_EXHAUSTED]);
    const quota = await admin.getQuota({ principal: 'user:q-one' }, { timeoutMs: 5000 });
    expect(quota.quotas.find((q) => q.resource === QuotaResource.SNAPSHOTS)).toMatchObject({ used: 2n, limit: 2n });
    const panelQuota = await admin.getQuota({ principal: panelOf('admin') }, { timeoutMs: 5000 });
    expect(panelQuota.quotas.find((q) => q.resource === QuotaResource.SNAPSHOTS)?.used).toBe(0n);
    testing.close();
  });

  it('rate limits are the user’s: one user exhausting its own leaves the other’s', async () => {
    await admin.putRole({ role: { name: 'limited', description: '', permissions: ['testing:echo'], denyPermissions: [] } }, { timeoutMs: 5000 });
    for (const user of ['r-one', 'r-two']) await admin.bindRole({ principal: `user:${user}`, roleName: 'limited' }, { timeoutMs: 5000 });
    const testing = await clientFor(TestingService, daemon, panels.get('admin'));
    const echo = (user: string) => echoAs(testing, user);
    // 10 a minute with a burst of one: the second call within 6 s is refused, for that user only.
    expect(await echo('r-one')).toBe('OK');
    expect(await echo('r-one')).toContain('RESOURCE_EXHAUSTED rate limit of 10 requests per minute exceeded for user:r-one');
    expect(await echo('r-two')).toBe('OK');
    testing.close();
  });

  it('the impersonating certificate’s own limit bounds all its users together', async () => {
    await admin.putRole({ role: { name: 'small-panel', description: '', permissions: ['access:impersonate', 'testing:echo'], denyPermissions: [] } }, { timeoutMs: 5000 });
    await admin.putRole({ role: { name: 'echo', description: '', permissions: ['testing:echo'], denyPermissions: [] } }, { timeoutMs: 5000 });
    const panel = 'spiffe://debvisor/panel/small';
    await admin.bindRole({ principal: panel, roleName: 'small-panel' }, { timeoutMs: 5000 });
    for (const user of ['s-one', 's-two']) await admin.bindRole({ principal: `user:${user}`, roleName: 'echo' }, { timeoutMs: 5000 });
    const testing = await clientFor(TestingService, daemon, await issueClientFor(daemon.pki, panel));
    const echo = (user: string) => echoAs(testing, user);
    // 20 a minute with a burst of two for the panel, far more for each user.
    expect(await echo('s-one')).toBe('OK');
    expect(await echo('s-two')).toBe('OK');
    expect(await echo('s-one')).toContain(`RESOURCE_EXHAUSTED rate limit of 20 requests per minute exceeded for ${panel}`);
    testing.close();
  });
});

describe('fuzzed impersonation headers', () => {
  it('never crash the call, never serve an unvalidated name, and name the header they refuse', async () => {
    const client = raw.get('admin');
    if (!client) throw new Error('no admin panel client');
    const printable = fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((code) => String.fromCharCode(code)), maxLength: 80 });
    const nameLike = fc.oneof(fc.stringMatching(/^[a-z0-9][a-z0-9.-]{0,70}$/), printable);
    const headers = fc.record(
      {
        'impersonate-user': nameLike,
        'impersonate-group': fc.array(nameLike, { maxLength: 40 }).map((names) => names.join(',')),
        'impersonate-reason': fc.oneof(printable, fc.string({ maxLength: 300 })),
        'impersonate-session': printable,
      },
      { requiredKeys: [] },
    );
    await fc.assert(
      fc.asyncProperty(headers, async (sent) => {
        // grpc-js refuses to send some values itself (leading or trailing spaces are trimmed, non-ASCII refused).
        const metadata = Object.fromEntries(Object.entries(sent).filter(([, value]) => /^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$/.test(value)));
        const result = await rawUnary(client, '/debvisor.v1.AccessService/WhoAmI', Buffer.alloc(0), metadata);
        const code = result.status.code;
        expect([Status.OK, Status.INVALID_ARGUMENT, Status.PERMISSION_DENIED, Status.UNAUTHENTICATED], `${Status[code]} ${result.status.details}`).toContain(code);
        if (code === Status.INVALID_ARGUMENT) expect(result.status.details).toMatch(/impersonate-(user|group|reason|session)/);
        if (code === Status.OK && metadata['impersonate-user'] !== undefined) expect(metadata['impersonate-user']).toMatch(/^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$/);
      }),
      { numRuns: 300 },
    );
  });
});
