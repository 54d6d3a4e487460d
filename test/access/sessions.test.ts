// User sessions on the real embedded store: who may create, list and revoke which sessions,
// the TTL bounds, the SECURITY audit records (never the token), and a revocation reaching a
// second watch-fed cache on the same store (another daemon's view).
import { readFileSync } from 'node:fs';
import { create, type Message } from '@bufbuild/protobuf';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessState } from '../../src/access/state.js';
import { isLive, UserSessions } from '../../src/access/sessions.js';
import type { AuditLog } from '../../src/audit/log.js';
import { UserSessionAuthenticator } from '../../src/authn/user-session.js';
import { configSchema, type Config } from '../../src/config/schema.js';
import { AccessService, CreateUserSessionRequestSchema, type CreateUserSessionResponse } from '../../src/gen/debvisor/v1/access_pb.js';
import { withIdempotency } from '../../src/operations/idempotency.js';
import type { CallContext } from '../../src/rpc/context.js';
import { compilePolicy } from '../../src/rpc/policy.js';
import { sessionHandlers } from '../../src/services/access-sessions.js';
import { InvalidArgumentError, RpcError, toStatus } from '../../src/rpc/errors.js';
import type { Principal } from '../../src/rpc/principal.js';
import { createRepositories, type Repositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import type { UserSessionRecord } from '../../src/store/records.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';
import { openLog, tempDir } from '../audit/helpers.js';

const PANEL_FP = 'ab'.repeat(32);
const OTHER_PANEL_FP = 'cd'.repeat(32);

function certificate(id: string, fingerprintSha256: string): Principal {
  return { id, kind: 'certificate', certificate: { fingerprintSha256, serialNumber: '01', notAfter: new Date('2030-01-01T00:00:00Z') } };
}

const panel = certificate('spiffe://debvisor/panel/web-panel', PANEL_FP);
const otherPanel = certificate('spiffe://debvisor/panel/other', OTHER_PANEL_FP);
const admin = certificate('spiffe://debvisor/admin/admin', 'ef'.repeat(32));
const adminPanel = certificate('spiffe://debvisor/panel/admin-panel', '12'.repeat(32));
/** Holds the `:any` session permissions through a role scoped to users a* only. */
const helpdesk = certificate('spiffe://debvisor/ops/helpdesk-a', '34'.repeat(32));
const HELPDESK_ROLE = 'helpdesk-a';

function actingFor(name: string, by: Principal): Principal {
  return { id: `user:${name}`, kind: 'user', delegation: { by, groups: [] } };
}

const alice = actingFor('alice', panel);
const bob = actingFor('bob', panel);
const aliceViaOther = actingFor('alice', otherPanel);
/** An admin user acting through a panel that is admin too: it holds the `:any` permissions. */
const root = actingFor('root', adminPanel);

const config: Config = configSchema.parse({
  auth: {
    bootstrap_admins: [admin.id],
    default_bindings: { [panel.id]: ['operator'], [otherPanel.id]: ['operator'], [adminPanel.id]: ['admin'], 'user:alice': ['developer'], 'user:bob': ['developer'], 'user:root': ['admin'], [helpdesk.id]: [HELPDESK_ROLE] },
    impersonation: { enabled: true, session_ttl_seconds: 3600, max_session_ttl_seconds: 7200 },
  },
});

const ctx = (principal: Principal): CallContext => ({ traceId: 'trace', principal, deadline: new Date(Date.now() + 60_000), signal: new AbortController().signal, peer: '10.0.0.9:5000' });

let harness: StoreHarness;
let store: Store;
let repos: Repositories;
let state: AccessState;
let audit: AuditLog;
let sessions: UserSessions;
const dirs = tempDir();
const running = new AbortController();

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  repos = createRepositories(store);
  state = new AccessState(repos, config.auth, (err) => {
    throw err;
  });
  await state.start(running.signal);
  await repos.roles.put(HELPDESK_ROLE, {
    schema_version: 1,
    name: HELPDESK_ROLE,
    description: 'sessions of users a* only',
    permissions: ['access:session:list', 'access:session:list:any', 'access:session:revoke', 'access:session:revoke:any'],
    deny_permissions: [],
    resource_globs: [{ kind: 'user', glob: 'a*' }],
    updated_at: new Date().toISOString(),
  });
  await vi.waitFor(() => expect(state.roles([HELPDESK_ROLE])).toHaveLength(1), { timeout: 30_000 });
  audit = await openLog(dirs.dir);
  sessions = new UserSessions(repos, state, audit, () => config);
});

afterAll(async () => {
  running.abort();
  await audit.close();
  await store.close();
  await harness.cleanup();
  dirs.cleanup();
});

/** The gRPC code a promise or function fails with. */
async function codeOf(work: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof work === 'function' ? work() : work);
  } catch (err) {
    if (err instanceof RpcError) return err.code;
    const status = toStatus(err, 't');
    return `status ${status.code}: ${status.details}`;
  }
  throw new Error('expected a refusal');
}

async function securityRecords(): Promise<Record<string, unknown>[]> {
  await audit.flush();
  return readFileSync(join(dirs.dir, 'rpc-audit.log'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((record) => record.type === 'SECURITY');
}

const verifier = () => new UserSessionAuthenticator(state.userSessions);

describe('CreateUserSession', () => {
  it('is refused to a call that acts for nobody', async () => {
    expect(await codeOf(sessions.create(ctx(panel), { ttlMs: undefined }))).toBe('FAILED_PRECONDITION');
  });

  it('binds the token to the user and the impersonating certificate, for the default TTL, and stores only the hash', async () => {
    const before = Date.now();
    const { record, token } = await sessions.create(ctx(alice), { ttlMs: undefined });
    expect(record).toMatchObject({ user: 'user:alice', impersonated_by: panel.id, cert_fingerprint_sha256: PANEL_FP });
    const lifetime = Date.parse(record.expires_at) - before;
    expect(lifetime).toBeGreaterThanOrEqual(3_600_000 - 1000);
    expect(lifetime).toBeLessThanOrEqual(3_600_000 + 1000);
    const stored = await store.get(repos.userSessions.keyOf(record.id));
    // dvs_<id>_<secret>: the secret is base64url, so it may hold '_' itself.
    const secret = token.slice(token.indexOf('_', 'dvs_'.length) + 1);
    expect(secret.length).toBeGreaterThan(20);
    expect(Buffer.from(stored?.value ?? []).toString()).not.toContain(secret);
    expect(verifier().verify(token, { user: 'user:alice', certFingerprint: PANEL_FP })).toBe(record.id);

    const created = (await securityRecords()).filter((r) => r.object === `user_session:${record.id}`);
    expect(created).toHaveLength(1);
    expect(created[0]).toMatchObject({ reason: 'user session created', details: { user: 'user:alice', impersonated_by: panel.id } });
    expect(JSON.stringify(created[0])).not.toContain(secret);
    expect(JSON.stringify(created[0])).toContain(panel.id);
  });

  it('takes a TTL between 1 s and max_session_ttl_seconds; anything else is INVALID_ARGUMENT naming ttl', async () => {
    const { record } = await sessions.create(ctx(alice), { ttlMs: 7_200_000 });
    expect(Date.parse(record.expires_at) - Date.parse(record.created_at)).toBe(7_200_000);
    for (const ttlMs of [0, -1000, 999, 7_200_001, Number.NaN]) {
      await expect(sessions.create(ctx(alice), { ttlMs }), String(ttlMs)).rejects.toSatisfy((err) => err instanceof InvalidArgumentError && err.field === 'ttl');
    }
  });

  it('deletes a user’s sessions that ended over a day ago, and only those, at its next login', async () => {
    const ago = (ms: number) => new Date(Date.now() - ms).toISOString();
    const DAY = 86_400_000;
    const old = (id: string, user: string, ended: Partial<UserSessionRecord>) => ({
      schema_version: 1 as const, id, user, impersonated_by: panel.id, cert_fingerprint_sha256: PANEL_FP, secret_sha256: '0'.repeat(64), created_at: ago(3 * DAY), expires_at: ago(2 * DAY), ...ended,
    });
    const records = [
      old('00000000000000a1', 'user:alice', {}),
      old('00000000000000a2', 'user:alice', { expires_at: ago(-DAY), revoked_at: ago(DAY + 60_000) }),
      old('00000000000000a3', 'user:alice', { expires_at: ago(DAY - 60_000) }),
      old('00000000000000b1', 'user:bob', {}),
    ];
    for (const record of records) state.userSessions.remember(record.id, record, (await repos.userSessions.create(record.id, record)).modRevision);
    await sessions.create(ctx(alice), { ttlMs: undefined });
    const left = new Set((await repos.userSessions.all()).map((s) => s.value.id));
    expect(records.map((r) => left.has(r.id))).toEqual([false, false, true, true]);
  });

  it('with a request_id, runs once: a retry gets the same session without its token (shown once)', async () => {
    const handler = sessionHandlers(sessions).createUserSession as (request: Message, ctx: CallContext) => Promise<unknown>;
    const call = withIdempotency(store, compilePolicy(AccessService.method.createUserSession)!, handler);
    const request = create(CreateUserSessionRequestSchema, { requestId: 'login-1', ttl: durationFromMs(600_000) });
    const first = (await call(request, ctx(alice))) as CreateUserSessionResponse;
    const again = (await call(request, ctx(alice))) as CreateUserSessionResponse;
    expect(first.token).toMatch(/^dvs_/);
    expect(again.session?.id).toBe(first.session?.id);
    expect(again.token).toBe('');
    expect(state.userSessions.values().filter((s) => s.id === first.session?.id)).toHaveLength(1);
    const reused = create(CreateUserSessionRequestSchema, { requestId: 'login-1', ttl: durationFromMs(60_000) });
    await expect(call(reused, ctx(alice))).rejects.toSatisfy((err) => err instanceof InvalidArgumentError && err.field === 'request_id');
  });
});

describe('ListUserSessions', () => {
  it('shows a user its own, a certificate those it created, and :any holders everyone', async () => {
    const mine = await sessions.create(ctx(bob), { ttlMs: undefined });
    const elsewhere = await sessions.create(ctx(aliceViaOther), { ttlMs: undefined });
    const list = (p: Principal, user = '') => sessions.list(ctx(p), { user, includeInactive: false, pageSize: 0, pageToken: '' }).sessions.map((s) => s.id);

    expect(list(bob)).toEqual([mine.record.id]);
    const alices = list(alice);
    expect(alices).toContain(elsewhere.record.id);
    expect(alices).not.toContain(mine.record.id);
    expect(list(otherPanel)).toEqual([elsewhere.record.id]);
    expect(list(otherPanel, 'alice')).toEqual([elsewhere.record.id]);
    expect(list(otherPanel, 'bob')).toEqual([]);
    expect(list(panel)).toContain(mine.record.id);
    expect(list(panel)).not.toContain(elsewhere.record.id);
    expect(list(admin)).toEqual(expect.arrayContaining([mine.record.id, elsewhere.record.id]));
    expect(list(root, 'bob')).toEqual([mine.record.id]);
    expect(await codeOf(() => list(bob, 'alice'))).toBe('PERMISSION_DENIED');
    expect(list(bob, 'bob')).toEqual([mine.record.id]);
  });

  it('a role scoped to some users lends its :any only for them', async () => {
    const ofBob = await sessions.create(ctx(bob), { ttlMs: undefined });
    const ofAlice = await sessions.create(ctx(alice), { ttlMs: undefined });
    const list = (user = '') => sessions.list(ctx(helpdesk), { user, includeInactive: false, pageSize: 0, pageToken: '' }).sessions.map((s) => s.id);
    expect(list()).toContain(ofAlice.record.id);
    expect(list()).not.toContain(ofBob.record.id);
    expect(list('alice')).toContain(ofAlice.record.id);
    expect(list('bob')).toEqual([]);
    // Outside the role's scope the session does not exist for this caller.
    expect(await codeOf(sessions.revoke(ctx(helpdesk), { sessionId: ofBob.record.id, user: '' }))).toMatch(/^status 5:/);
    expect(await sessions.revoke(ctx(helpdesk), { sessionId: '', user: 'bob' })).toBe(0);
    expect(await sessions.revoke(ctx(helpdesk), { sessionId: ofAlice.record.id, user: '' })).toBe(1);
    // The same rule for every owner-scoped object (operations, keys, quotas): mayActOn names the owner.
    expect(state.mayActOn(helpdesk, 'user:alice', 'access:session:list')).toBe(true);
    expect(state.mayActOn(helpdesk, 'user:bob', 'access:session:list')).toBe(false);
  });

  it('validates the user name and pages by id', () => {
    expect(() => sessions.list(ctx(admin), { user: 'user:alice', includeInactive: false, pageSize: 0, pageToken: '' })).toThrow(/^user: /);
    const all = sessions.list(ctx(admin), { user: '', includeInactive: true, pageSize: 0, pageToken: '' }).sessions.map((s) => s.id);
    expect(all).toEqual([...all].sort());
    const first = sessions.list(ctx(admin), { user: '', includeInactive: true, pageSize: 2, pageToken: '' });
    const second = sessions.list(ctx(admin), { user: '', includeInactive: true, pageSize: 2, pageToken: first.nextPageToken });
    expect([...first.sessions, ...second.sessions].map((s) => s.id)).toEqual(all.slice(0, 4));
  });
});

describe('RevokeUserSession', () => {
  it('lets the user revoke its own session once: the token stops working and the revocation is audited', async () => {
    const { record, token } = await sessions.create(ctx(alice), { ttlMs: undefined });
    expect(await sessions.revoke(ctx(alice), { sessionId: record.id, user: '' })).toBe(1);
    expect(() => verifier().verify(token, { user: 'user:alice', certFingerprint: PANEL_FP })).toThrow();
    expect(await sessions.revoke(ctx(alice), { sessionId: record.id, user: '' })).toBe(0);
    const listed = (includeInactive: boolean) => sessions.list(ctx(alice), { user: '', includeInactive, pageSize: 0, pageToken: '' }).sessions.map((s) => s.id);
    expect(listed(false)).not.toContain(record.id);
    expect(listed(true)).toContain(record.id);
    const reasons = (await securityRecords()).filter((r) => r.object === `user_session:${record.id}`).map((r) => r.reason);
    expect(reasons).toEqual(['user session created', 'user session revoked', 'user session revoke: already revoked or expired']);
  });

  it('a revoked session is a credentials problem for calls still running with it (event streams end)', async () => {
    const { record } = await sessions.create(ctx(alice), { ttlMs: undefined });
    const withSession: Principal = { ...alice, delegation: { by: panel, groups: [], sessionId: record.id } };
    expect(state.credentialsProblem(withSession, Date.now())).toBeUndefined();
    await sessions.revoke(ctx(alice), { sessionId: record.id, user: '' });
    expect(state.credentialsProblem(withSession, Date.now())).toBe(`user session ${record.id} ended`);
    expect(state.credentialsProblem(alice, Date.now())).toBeUndefined();
  });

  it('lets the creating certificate and :any holders revoke; to anyone else the session does not exist', async () => {
    const one = await sessions.create(ctx(alice), { ttlMs: undefined });
    const two = await sessions.create(ctx(alice), { ttlMs: undefined });
    // Alice through another panel is still alice: her own sessions are hers to end.
    for (const stranger of [bob, otherPanel]) {
      expect(await codeOf(sessions.revoke(ctx(stranger), { sessionId: one.record.id, user: '' }))).toMatch(/^status 5: user session/);
    }
    expect(await codeOf(sessions.revoke(ctx(alice), { sessionId: one.record.id, user: 'bob' }))).toMatch(/^status 5:/);
    expect(await codeOf(sessions.revoke(ctx(alice), { sessionId: '0123456789abcdef', user: '' }))).toMatch(/^status 5:/);
    expect(await sessions.revoke(ctx(panel), { sessionId: one.record.id, user: 'alice' })).toBe(1);
    expect(await sessions.revoke(ctx(root), { sessionId: two.record.id, user: '' })).toBe(1);
  });

  it('revokes every live session of a user the caller may revoke, and counts only those', async () => {
    await sessions.create(ctx(alice), { ttlMs: undefined });
    await sessions.create(ctx(aliceViaOther), { ttlMs: undefined });
    const liveOfAlice = () => state.userSessions.values().filter((s) => s.user === 'user:alice' && isLive(s, Date.now()));
    const byOther = liveOfAlice().filter((s) => s.impersonated_by === otherPanel.id).length;
    const byPanel = liveOfAlice().length - byOther;
    expect(Math.min(byOther, byPanel)).toBeGreaterThan(0);
    expect(await codeOf(sessions.revoke(ctx(bob), { sessionId: '', user: 'alice' }))).toBe('PERMISSION_DENIED');
    // The other panel revokes only what it created.
    expect(await sessions.revoke(ctx(otherPanel), { sessionId: '', user: 'alice' })).toBe(byOther);
    expect(liveOfAlice().map((s) => s.impersonated_by)).toEqual(Array(byPanel).fill(panel.id));
    expect(await sessions.revoke(ctx(alice), { sessionId: '', user: 'alice' })).toBe(byPanel);
    expect(liveOfAlice()).toEqual([]);
    expect(await sessions.revoke(ctx(admin), { sessionId: '', user: 'alice' })).toBe(0);
    const audited = (await securityRecords()).filter((r) => r.object === 'user:alice' && r.reason === 'user sessions revoked');
    expect(audited.map((r) => (r.details as { revoked: number }).revoked)).toEqual([byOther, byPanel, 0]);
  });

  it('validates its input: INVALID_ARGUMENT naming the field', async () => {
    const { token } = await sessions.create(ctx(alice), { ttlMs: undefined });
    const fieldOf = (request: { sessionId: string; user: string }) =>
      sessions.revoke(ctx(alice), request).then(
        () => 'accepted',
        (err: unknown) => (err instanceof InvalidArgumentError ? err.field : String(err)),
      );
    expect(await fieldOf({ sessionId: token, user: '' })).toBe('session_id');
    expect(await fieldOf({ sessionId: '', user: '' })).toBe('session_id');
    expect(await fieldOf({ sessionId: '', user: 'Alice' })).toBe('user');
    expect(await fieldOf({ sessionId: '0123456789abcdef', user: '-x' })).toBe('user');
  });

  it('reaches another daemon through its own watch-fed cache', async () => {
    const other = new AccessState(repos, config.auth, (err) => {
      throw err;
    });
    await other.start(running.signal);
    const { record, token } = await sessions.create(ctx(alice), { ttlMs: undefined });
    const seen = (pred: (revoked: boolean) => boolean) =>
      new Promise<void>((resolve) => {
        const check = () => {
          const found = other.userSessions.get(record.id);
          if (found && pred(found.revoked_at !== undefined)) {
            stop();
            resolve();
          }
        };
        const stop = other.userSessions.subscribe(check);
        check();
      });
    await seen((revoked) => !revoked);
    const remote = new UserSessionAuthenticator(other.userSessions);
    expect(remote.verify(token, { user: 'user:alice', certFingerprint: PANEL_FP })).toBe(record.id);
    await sessions.revoke(ctx(alice), { sessionId: record.id, user: '' });
    await seen((revoked) => revoked);
    expect(() => remote.verify(token, { user: 'user:alice', certFingerprint: PANEL_FP })).toThrow();
  });
});
