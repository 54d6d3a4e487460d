// User sessions end to end (issue 21): a panel certificate acting for users with
// impersonate-user, and auth.impersonation.require_session on. The token from
// CreateUserSession is accepted for its user through its certificate only, and refused
// once revoked or expired; a revocation on one daemon reaches another on the same etcd
// within 1 s.
// The impersonation step (src/chain/impersonation.ts) lets CreateUserSession through without
// a session (it is how one gets one) and checks impersonate-session against the watch-fed
// session cache (src/authn/user-session.ts).
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status as Status } from '@grpc/grpc-js';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import type { TypedClient } from '../../src/client/client.js';
import { ensureDevPki } from '../../src/pki/index.js';
import { clientFor, startDaemon, type ClientPem, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { auditRecord, codeOf, issueClientFor } from '../support/security.js';

const PANEL = 'spiffe://debvisor/panel/web-panel';
const OTHER_PANEL = 'spiffe://debvisor/panel/other-panel';

type MethodsOf<T> = T extends GenService<infer S> ? S : never;
type Access = TypedClient<MethodsOf<typeof AccessService>>;

const T = { timeoutMs: 5000 };
const as = (user: string, session?: string) => ({ ...T, metadata: { 'impersonate-user': user, ...(session ? { 'impersonate-session': session } : {}) } });

const CONFIG = {
  auth: {
    default_bindings: { [PANEL]: ['admin'], [OTHER_PANEL]: ['admin'], 'user:alice': ['developer'], 'user:bob': ['developer'] },
    impersonation: { enabled: true, require_session: true, session_ttl_seconds: 3600 },
  },
  rate_limit: { per_role_per_minute: { admin: 100_000, developer: 100_000 }, default_per_minute: 100_000 },
};


describe('user sessions on one daemon (embedded store)', () => {
  let daemon: RunningDaemon;
  let panel: Access;
  let otherPanel: Access;

  beforeAll(async () => {
    daemon = await startDaemon({ config: CONFIG });
    const [panelPem, otherPem]: ClientPem[] = await Promise.all([issueClientFor(daemon.pki, PANEL), issueClientFor(daemon.pki, OTHER_PANEL)]);
    panel = await clientFor(AccessService, daemon, panelPem);
    otherPanel = await clientFor(AccessService, daemon, otherPem);
  });

  afterAll(async () => {
    panel.close();
    otherPanel.close();
    await daemon.cleanup();
  });

  it('CreateUserSession acting for nobody is FAILED_PRECONDITION', async () => {
    expect((await codeOf(panel.createUserSession({}, T))).code).toBe(Status.FAILED_PRECONDITION);
  });

  it('issues a token bound to the user and the panel, required on impersonated calls, and audited without it', async () => {
    const created = await panel.createUserSession({}, as('alice'));
    expect(created.token).toMatch(/^dvs_[0-9a-f]{16}_/);
    expect(created.session).toMatchObject({ user: 'user:alice', impersonatedBy: PANEL });
    expect((await panel.whoAmI({}, as('alice', created.token))).principalId).toBe('user:alice');
    expect((await codeOf(panel.whoAmI({}, as('alice')))).code).toBe(Status.UNAUTHENTICATED);
    const listed = await panel.listUserSessions({}, as('alice', created.token));
    expect(listed.sessions.map((s) => s.id)).toContain(created.session?.id);

    await auditRecord(daemon, (r) => r.type === 'SECURITY' && r.object === `user_session:${created.session?.id}`);
    const log = await readFile(join(daemon.dir, 'audit', 'rpc-audit.log'), 'utf8');
    expect(log).not.toContain(created.token.slice(-43));
  });

  it('refuses the token for another user and through another certificate', async () => {
    const { token } = await panel.createUserSession({}, as('alice'));
    expect((await codeOf(panel.whoAmI({}, as('bob', token)))).code).toBe(Status.UNAUTHENTICATED);
    expect((await codeOf(otherPanel.whoAmI({}, as('alice', token)))).code).toBe(Status.UNAUTHENTICATED);
    expect((await codeOf(panel.whoAmI({}, as('alice', `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`)))).code).toBe(Status.UNAUTHENTICATED);
  });

  it('a user logs itself out: the token is refused from then on', async () => {
    const { token, session } = await panel.createUserSession({}, as('alice'));
    expect((await panel.revokeUserSession({ sessionId: session!.id }, as('alice', token))).revoked).toBe(1);
    expect((await codeOf(panel.whoAmI({}, as('alice', token)))).code).toBe(Status.UNAUTHENTICATED);
  });

  it('the panel revokes all sessions of a user it created', async () => {
    const tokens = await Promise.all([panel.createUserSession({}, as('bob')), panel.createUserSession({}, as('bob'))]);
    expect((await panel.revokeUserSession({ user: 'bob' }, T)).revoked).toBeGreaterThanOrEqual(2);
    for (const { token } of tokens) expect((await codeOf(panel.whoAmI({}, as('bob', token)))).code).toBe(Status.UNAUTHENTICATED);
  });

  it('an expired session is refused', async () => {
    const { token } = await panel.createUserSession({ ttl: durationFromMs(4000) }, as('alice'));
    expect((await codeOf(panel.whoAmI({}, as('alice', token)))).code).toBe(Status.OK);
    await vi.waitFor(async () => expect((await codeOf(panel.whoAmI({}, as('alice', token)))).code).toBe(Status.UNAUTHENTICATED), { timeout: 20_000, interval: 100 });
  });
});

describe('a session revoked on daemon A is refused by daemon B (shared etcd) within 1 s', () => {
  let etcd: EtcdCluster;
  let pkiDir: string;
  let a: RunningDaemon;
  let b: RunningDaemon;

  beforeAll(async () => {
    etcd = await startEtcd();
    pkiDir = await mkdtemp(join(tmpdir(), 'rpcd-sessions-pki-'));
    await ensureDevPki(pkiDir);
    const config = { ...CONFIG, store: { backend: 'etcd', etcd: { endpoints: etcd.endpoints } } };
    [a, b] = await Promise.all([startDaemon({ pkiDir, config }), startDaemon({ pkiDir, config })]);
  });

  afterAll(async () => {
    await Promise.all([a.cleanup(), b.cleanup()]);
    await etcd.stop();
    if (pkiDir) await rm(pkiDir, { recursive: true, force: true });
  });

  it('a user’s binding made on daemon A governs its impersonated calls on daemon B', async () => {
    const admin = await clientFor(AccessService, a);
    const pem = await issueClientFor(a.pki, PANEL);
    const onA = await clientFor(AccessService, a, pem);
    const onB = await clientFor(AccessService, b, pem);
    try {
      await admin.bindRole({ principal: 'user:erin', roleName: 'operator' }, T);
      const { token } = await onA.createUserSession({}, as('erin'));
      await vi.waitFor(async () => expect((await onB.whoAmI({}, as('erin', token))).roles).toEqual(['operator']), { timeout: 5000, interval: 50 });
      const me = await onB.whoAmI({}, as('erin', token));
      expect(me.impersonation?.impersonatedBy).toBe(PANEL);
    } finally {
      admin.close();
      onA.close();
      onB.close();
    }
  });

  it('within 1 s of RevokeUserSession returning', async () => {
    const pem = await issueClientFor(a.pki, PANEL);
    const onA = await clientFor(AccessService, a, pem);
    const onB = await clientFor(AccessService, b, pem);
    try {
      const { token, session } = await onA.createUserSession({}, as('alice'));
      await vi.waitFor(async () => expect((await codeOf(onB.whoAmI({}, as('alice', token)))).code).toBe(Status.OK), { timeout: 5000, interval: 20 });

      let refusedAt = -1;
      const poller = (async () => {
        const start = Date.now();
        while (Date.now() - start < 6000) {
          const result = await codeOf(onB.whoAmI({}, as('alice', token)));
          if (result.code === Status.UNAUTHENTICATED) {
            refusedAt = Date.now();
            return;
          }
          if (result.code !== Status.OK) throw new Error(`unexpected ${result.code}: ${result.details}`);
          await sleep(20);
        }
      })();
      await onA.revokeUserSession({ sessionId: session!.id }, T);
      const returnedAt = Date.now();
      await poller;
      console.log(`etcd session revocation: daemon B refused the token ${refusedAt - returnedAt} ms after RevokeUserSession returned on A`);
      expect(refusedAt).toBeGreaterThan(0);
      expect(refusedAt - returnedAt).toBeLessThan(1000);
    } finally {
      onA.close();
      onB.close();
    }
  });
});
