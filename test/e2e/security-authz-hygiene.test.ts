// End-to-end authorization hygiene (issue 17) against a real daemon over real mTLS:
// permissions must be ones the API declares (a mistyped deny would deny nothing),
// ListRoleBindings answers "who is admin?" including the config file's bindings, and
// WhoAmI is open to every authenticated caller, a narrow CI key included.
import { readdirSync, readFileSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { parse, stringify } from 'yaml';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import type { GenService } from '@bufbuild/protobuf/codegenv2';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { TypedClient } from '../../src/client/client.js';
import { AccessService, PrincipalKind, RoleBindingSource, type RoleBinding } from '../../src/gen/debvisor/v1/access_pb.js';
import { QuotaResource, ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { ctlOn } from '../support/ctl.js';
import { clientFor, deepMerge, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { issueClientFor, rejection } from '../support/security.js';

type MethodsOf<T> = T extends GenService<infer S> ? S : never;
type Access = TypedClient<MethodsOf<typeof AccessService>>;

const PANEL = 'spiffe://debvisor/hygiene/panel';
const GHOST = 'spiffe://debvisor/hygiene/ghost';
const SECOND_ADMIN = 'spiffe://debvisor/hygiene/second-admin';
const DEVELOPER = 'spiffe://debvisor/hygiene/developer';
const NOBODY = 'spiffe://debvisor/hygiene/nobody';
const LOCKED = 'spiffe://debvisor/hygiene/locked';
const T = { timeoutMs: 5000 };
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

let daemon: RunningDaemon;
let admin: Access;
let anonymous: Access;
let developer: Access;
let nobody: Access;
let locked: Access;
let adminPrincipal: string;
/** Every API key secret this suite was given: none may reach a log or the audit file. */
const secrets: string[] = [];

beforeAll(async () => {
  daemon = await startDaemon({
    config: {
      // The panel is operator by config; the ghost is bound by config to a role that does not exist.
      auth: { default_bindings: { [PANEL]: ['operator'], [GHOST]: ['operater'] } },
      rate_limit: { per_role_per_minute: { admin: 100_000, developer: 100_000 }, default_per_minute: 100_000 },
    },
  });
  adminPrincipal = daemon.pki.adminPrincipal;
  admin = await clientFor(AccessService, daemon);
  anonymous = await clientFor(AccessService, daemon, null);
  developer = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, DEVELOPER));
  nobody = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, NOBODY));
  locked = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, LOCKED));
  await admin.bindRole({ principal: DEVELOPER, roleName: 'developer' }, T);
});

afterAll(async () => {
  for (const client of [admin, anonymous, developer, nobody, locked]) client.close();
  await daemon.cleanup();
});

describe('a permission must be one the API declares', () => {
  it('refuses a mistyped deny in a role, naming the field and the closest permission; nothing is stored', async () => {
    const err = await rejection(admin.putRole({ role: { name: 'no-prune', permissions: ['vm:list'], denyPermissions: ['storage:snapshot:prun'] } }, T));
    expect(err.code).toBe(Status.INVALID_ARGUMENT);
    expect(err.details).toContain('role.deny_permissions[0]');
    expect(err.details).toContain('"storage:snapshot:prun"');
    expect(err.details).toContain('did you mean storage:snapshot:prune?');
    const roles = await admin.listRoles({}, T);
    expect(roles.roles.map((r) => r.name)).not.toContain('no-prune');
  });

  it('refuses a mistyped grant in a role', async () => {
    const err = await rejection(admin.putRole({ role: { name: 'starter', permissions: ['vm:list', 'vm:strat'] } }, T));
    expect(err.code).toBe(Status.INVALID_ARGUMENT);
    expect(err.details).toContain('role.permissions[1]');
    expect(err.details).toContain('did you mean vm:start?');
  });

  it('refuses a mistyped API key permission, before any escalation check, for any caller', async () => {
    for (const caller of [admin, developer]) {
      const err = await rejection(caller.createApiKey({ description: 'ci', permissions: ['vm:list', 'vm:strat'] }, T));
      expect(err.code).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toContain('permissions[1]');
      expect(err.details).toContain('did you mean vm:start?');
    }
  });

  it('refuses a wildcard that matches no declared permission, hinting one that does', async () => {
    const role = await rejection(admin.putRole({ role: { name: 'typo-wild', permissions: ['stroage:*'] } }, T));
    expect(role.code).toBe(Status.INVALID_ARGUMENT);
    expect(role.details).toContain('role.permissions[0]');
    expect(role.details).toContain('did you mean storage:*?');
    const deny = await rejection(admin.putRole({ role: { name: 'typo-wild', permissions: ['vm:list'], denyPermissions: ['*:*:*:delete'] } }, T));
    expect(deny.code).toBe(Status.INVALID_ARGUMENT);
    expect(deny.details).toContain('role.deny_permissions[0]');
    const key = await rejection(admin.createApiKey({ description: 'ci', permissions: ['vm:*:*:*'] }, T));
    expect(key.code).toBe(Status.INVALID_ARGUMENT);
    expect(key.details).toContain('permissions[0]');
    // A cross-principal form exists only for owner-scoped RPCs.
    const any = await rejection(admin.createApiKey({ description: 'ci', permissions: ['vm:start:any'] }, T));
    expect(any.code).toBe(Status.INVALID_ARGUMENT);
  });

  it('accepts declared permissions and wildcards that match some', async () => {
    const put = await admin.putRole(
      { role: { name: 'auditor', permissions: ['*:list', 'storage:snapshot:*', 'operation:get:any'], denyPermissions: ['storage:snapshot:prune', 'access:*'] } },
      T,
    );
    expect(put.created).toBe(true);
    const key = await admin.createApiKey({ description: 'ci', permissions: ['vm:*', 'access:apikey:list:any'] }, T);
    secrets.push(key.secret);
    expect(key.apiKey?.permissions).toEqual(['vm:*', 'access:apikey:list:any']);
  });

  it('refuses binding a role that does not exist, hinting the closest role', async () => {
    const err = await rejection(admin.bindRole({ principal: NOBODY, roleName: 'operater' }, T));
    expect(err.code).toBe(Status.INVALID_ARGUMENT);
    expect(err.details).toContain('role_name');
    expect(err.details).toContain('did you mean operator?');
  });

  it('debvisorctl shows the refusal and the hint, and exits non-zero', async () => {
    const deny = await ctlOn(daemon, 'role', 'put', 'ci', '-p', 'vm:list', '--deny', 'storage:snapshot:prun');
    expect(deny.code).not.toBe(0);
    expect(deny.stderr).toContain('INVALID_ARGUMENT');
    expect(deny.stderr).toContain('did you mean storage:snapshot:prune?');
    const key = await ctlOn(daemon, 'apikey', 'create', '-p', 'vm:strat');
    expect(key.code).not.toBe(0);
    expect(key.stderr).toContain('did you mean vm:start?');
    expect(key.stdout).not.toContain('secret');
  });
});

describe('ListRoleBindings: who holds which role', () => {
  const list = async (filter: { principal?: string; roleName?: string }, client: Access = admin): Promise<RoleBinding[]> => (await client.listRoleBindings(filter, T)).bindings;
  const brief = (bindings: RoleBinding[]) => bindings.map((b) => ({ principal: b.principal, role: b.roleName, source: b.source }));

  it('"who is admin?" names the bootstrap admin from the config, and store bindings, each with its source', async () => {
    expect(brief(await list({ roleName: 'admin' }))).toEqual([{ principal: adminPrincipal, role: 'admin', source: RoleBindingSource.BOOTSTRAP_ADMIN }]);
    const bound = await admin.bindRole({ principal: SECOND_ADMIN, roleName: 'admin' }, T);
    expect(bound.binding?.source).toBe(RoleBindingSource.STORE);
    expect(brief(await list({ roleName: 'admin' }))).toEqual(
      [
        { principal: adminPrincipal, role: 'admin', source: RoleBindingSource.BOOTSTRAP_ADMIN },
        { principal: SECOND_ADMIN, role: 'admin', source: RoleBindingSource.STORE },
      ].sort((a, b) => (a.principal < b.principal ? -1 : 1)),
    );
    await admin.unbindRole({ principal: SECOND_ADMIN, roleName: 'admin' }, T);
    expect(brief(await list({ roleName: 'admin' }))).toEqual([{ principal: adminPrincipal, role: 'admin', source: RoleBindingSource.BOOTSTRAP_ADMIN }]);
  });

  it('filters by principal: config bindings and store bindings of the same principal both show', async () => {
    expect(brief(await list({ principal: PANEL }))).toEqual([{ principal: PANEL, role: 'operator', source: RoleBindingSource.CONFIG }]);
    await admin.bindRole({ principal: PANEL, roleName: 'operator' }, T);
    await admin.bindRole({ principal: PANEL, roleName: 'viewer' }, T);
    expect(brief(await list({ principal: PANEL }))).toEqual([
      { principal: PANEL, role: 'operator', source: RoleBindingSource.CONFIG },
      { principal: PANEL, role: 'operator', source: RoleBindingSource.STORE },
      { principal: PANEL, role: 'viewer', source: RoleBindingSource.STORE },
    ]);
    expect(brief(await list({ principal: PANEL, roleName: 'viewer' }))).toEqual([{ principal: PANEL, role: 'viewer', source: RoleBindingSource.STORE }]);
    expect(await list({ principal: 'spiffe://debvisor/hygiene/unknown' })).toEqual([]);
  });

  it('lists config bindings to missing roles too (they grant nothing), and the daemon warns about them', async () => {
    expect(brief(await list({ principal: GHOST }))).toEqual([{ principal: GHOST, role: 'operater', source: RoleBindingSource.CONFIG }]);
    const warning = daemon.logRecords().find((r) => r.principal === GHOST && r.role === 'operater');
    expect(warning).toMatchObject({ closest_role: 'operator' });
    expect(String(warning?.msg)).toContain('does not exist');
  });

  it('follows the config file on SIGHUP, warning again about missing roles; a name that is no role name is refused', async () => {
    const config = parse(await readFile(daemon.configFile, 'utf8')) as Record<string, unknown>;
    const rewrite = async (bindings: Record<string, string[]>) => {
      await writeFile(daemon.configFile, stringify(deepMerge(config, { auth: { default_bindings: bindings } })), { mode: 0o600 });
      const seen = daemon.logRecords().length;
      daemon.process.kill('SIGHUP');
      return vi.waitFor(
        () => {
          const done = daemon.logRecords().slice(seen).find((r) => /^reload(ed configuration| refused)/.test(String(r.msg)));
          expect(done).toBeDefined();
          return { outcome: String(done?.msg), records: daemon.logRecords().slice(seen) };
        },
        { timeout: 15_000, interval: 50 },
      );
    };
    const reloaded = await rewrite({ [PANEL]: ['operator'], [GHOST]: ['viewr'] });
    expect(reloaded.outcome).toMatch(/^reloaded/);
    expect(reloaded.records.find((r) => r.principal === GHOST && r.role === 'viewr')).toMatchObject({ closest_role: 'viewer' });
    expect(brief(await list({ principal: GHOST }))).toEqual([{ principal: GHOST, role: 'viewr', source: RoleBindingSource.CONFIG }]);

    const refused = await rewrite({ [PANEL]: ['operator'], [GHOST]: ['vm:list'] });
    expect(refused.outcome).toMatch(/^reload refused/);
    expect(String(refused.records.find((r) => String(r.msg).startsWith('reload refused'))?.problem)).toContain('auth.default_bindings');
    expect(brief(await list({ principal: GHOST }))).toEqual([{ principal: GHOST, role: 'viewr', source: RoleBindingSource.CONFIG }]);
  });

  it('pages like the other list RPCs: every binding exactly once', async () => {
    const all = await list({});
    expect(all.length).toBeGreaterThanOrEqual(6);
    const paged: RoleBinding[] = [];
    let pageToken = '';
    do {
      const page = await admin.listRoleBindings({ pageSize: 2, pageToken }, T);
      expect(page.bindings.length).toBeLessThanOrEqual(2);
      paged.push(...page.bindings);
      pageToken = page.nextPageToken;
    } while (pageToken);
    expect(brief(paged)).toEqual(brief(all));
    const bad = await rejection(admin.listRoleBindings({ pageToken: '!!' }, T));
    expect(bad.code).toBe(Status.INVALID_ARGUMENT);
    expect(bad.details).toContain('page_token');
  });

  it('needs access:binding:list', async () => {
    const err = await rejection(developer.listRoleBindings({}, T));
    expect(err.code).toBe(Status.PERMISSION_DENIED);
    expect(err.details).toContain('access:binding:list');
  });

  it('a key scoped to principal globs sees only those principals', async () => {
    const key = await admin.createApiKey(
      { description: 'panel bindings', permissions: ['access:binding:list'], resourceGlobs: [{ kind: ResourceKind.PRINCIPAL, glob: 'spiffe://debvisor/hygiene/pa*' }] },
      T,
    );
    secrets.push(key.secret);
    const seen = await anonymous.listRoleBindings({}, { ...T, metadata: bearer(key.secret) });
    expect(new Set(seen.bindings.map((b) => b.principal))).toEqual(new Set([PANEL]));
    const outside = await rejection(anonymous.listRoleBindings({ principal: adminPrincipal }, { ...T, metadata: bearer(key.secret) }));
    expect(outside.code).toBe(Status.PERMISSION_DENIED);
  });

  it('debvisorctl role bindings prints principal, role and source, filtered', async () => {
    // -o wide: whole cells (the default table fits 80 columns and may cut them).
    const admins = await ctlOn(daemon, '-o', 'wide', 'role', 'bindings', '--role', 'admin');
    expect(admins.code, admins.stderr).toBe(0);
    expect(admins.stdout).toContain(adminPrincipal);
    expect(admins.stdout).toContain('config (auth.bootstrap_admins)');
    expect(admins.stdout).not.toContain(PANEL);
    const panel = await ctlOn(daemon, '-o', 'wide', 'role', 'bindings', '--principal', PANEL);
    expect(panel.code, panel.stderr).toBe(0);
    expect(panel.stdout).toMatch(/operator.*config \(auth\.default_bindings\)/);
    expect(panel.stdout).toMatch(/viewer.*store \(role bind\)/);
    expect(panel.stdout).not.toContain(adminPrincipal);
    const json = await ctlOn(daemon, '-o', 'json', 'role', 'bindings', '--principal', PANEL, '--role', 'viewer');
    expect(json.code, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({ bindings: [{ principal: PANEL, roleName: 'viewer', source: 'ROLE_BINDING_SOURCE_STORE' }] });
    const none = await ctlOn(daemon, 'role', 'bindings', '--role', 'no-such-role');
    expect(none.code, none.stderr).toBe(0);
    expect(none.stdout).toContain('(none)');
  });
});

describe('WhoAmI: every authenticated caller, and only those', () => {
  it('a CI key holding only vm:list may ask who it is', async () => {
    const key = await admin.createApiKey({ description: 'ci', permissions: ['vm:list'] }, T);
    secrets.push(key.secret);
    const me = await anonymous.whoAmI({}, { ...T, metadata: bearer(key.secret) });
    expect(me.kind).toBe(PrincipalKind.API_KEY);
    expect(me.principalId).toBe(adminPrincipal);
    expect(me.apiKeyId).toBe(key.apiKey?.keyId);
    expect(me.permissions).toEqual(['vm:list']);
    // Nothing else opened up: the key still cannot list roles.
    const other = await rejection(anonymous.listRoles({}, { ...T, metadata: bearer(key.secret) }));
    expect(other.code).toBe(Status.PERMISSION_DENIED);
  });

  it('a developer’s key holding only vm:get may ask too', async () => {
    const key = await developer.createApiKey({ description: 'ci', permissions: ['vm:get'] }, T);
    secrets.push(key.secret);
    expect((await anonymous.whoAmI({}, { ...T, metadata: bearer(key.secret) })).principalId).toBe(DEVELOPER);
  });

  it('a certificate with no roles, and one whose role denies everything, may ask', async () => {
    const me = await nobody.whoAmI({}, T);
    expect(me.principalId).toBe(NOBODY);
    expect(me.roles).toEqual([]);
    expect(me.permissions).toEqual([]);
    await admin.putRole({ role: { name: 'lockdown', permissions: ['vm:list'], denyPermissions: ['*'] } }, T);
    await admin.bindRole({ principal: LOCKED, roleName: 'lockdown' }, T);
    expect((await locked.whoAmI({}, T)).roles).toEqual(['lockdown']);
    expect((await rejection(locked.listRoles({}, T))).code).toBe(Status.PERMISSION_DENIED);
  });

  it('an unauthenticated caller is still refused', async () => {
    const none = await rejection(anonymous.whoAmI({}, T));
    expect(none.code).toBe(Status.UNAUTHENTICATED);
    const forged = await rejection(anonymous.whoAmI({}, { ...T, metadata: bearer('dvk_notakey_notasecret') }));
    expect(forged.code).toBe(Status.UNAUTHENTICATED);
  });

  it('a revoked key is refused', async () => {
    const key = await admin.createApiKey({ description: 'short-lived', permissions: ['vm:list'] }, T);
    secrets.push(key.secret);
    await admin.revokeApiKey({ keyId: key.apiKey!.keyId }, T);
    await vi.waitFor(async () => expect((await rejection(anonymous.whoAmI({}, { ...T, metadata: bearer(key.secret) }))).code).toBe(Status.UNAUTHENTICATED), {
      timeout: 10_000,
      interval: 50,
    });
  });
});

describe('secrets', () => {
  it('no key secret of this suite is in the daemon’s output or its audit files', () => {
    expect(secrets.length).toBeGreaterThanOrEqual(4);
    const auditDir = join(daemon.dir, 'audit');
    const texts = [daemon.logs(), ...readdirSync(auditDir).map((name) => readFileSync(join(auditDir, name), 'utf8'))];
    for (const secret of secrets) for (const text of texts) expect(text.includes(secret)).toBe(false);
  });
});

describe('text in access records', () => {
  // Control characters, separators and bidi overrides forge log lines and drive terminals.
  const hostile = ['ci\u001b[2J', 'a\u0000b', 'line\nbreak', 'x\u2028y', 'admin\u202e', 'tab\there', 'c1\u009b'];

  it('refuses unsafe characters in owners, principals and descriptions with INVALID_ARGUMENT naming the field', async () => {
    for (const text of hostile) {
      const cases: [Promise<unknown>, string][] = [
        [admin.createApiKey({ permissions: ['vm:list'], owner: text }, T), 'owner'],
        [admin.createApiKey({ permissions: ['vm:list'], description: text }, T), 'description'],
        [admin.bindRole({ principal: text, roleName: 'viewer' }, T), 'principal'],
        [admin.setQuota({ principal: text, resource: QuotaResource.SNAPSHOTS, limit: 5n }, T), 'principal'],
        [admin.putRole({ role: { name: 'texty', description: text, permissions: ['vm:list'] } }, T), 'role.description'],
      ];
      for (const [call, field] of cases) {
        const err = await rejection(call);
        expect([JSON.stringify(text), field, err.code]).toEqual([JSON.stringify(text), field, Status.INVALID_ARGUMENT]);
        expect(err.details.startsWith(`${field}: `)).toBe(true);
      }
    }
  });

  it('takes printable text in any script', async () => {
    const created = await admin.createApiKey({ permissions: ['vm:list'], description: 'Überprüfung – テスト 🙂' }, T);
    expect(created.apiKey?.description).toBe('Überprüfung – テスト 🙂');
    await admin.revokeApiKey({ keyId: created.apiKey!.keyId }, T);
  });
});
