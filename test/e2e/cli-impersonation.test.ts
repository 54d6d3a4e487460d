// debvisorctl's side of impersonation (issue 21) against a real daemon: role bindings of
// user:/group: principals, the names they must have, certificates that may not pose as users,
// --as refusals before anything is sent, and --api-key winning over DEBVISORCTL_CERT.
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { ctlOn } from '../support/ctl.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { auditOf, issueClientFor, rejection, traceIdOf } from '../support/security.js';

const T = { timeoutMs: 5000 };

let daemon: RunningDaemon;
const ctl = (...args: string[]) => ctlOn(daemon, ...args);

beforeAll(async () => {
  daemon = await startDaemon({ config: { auth: { impersonation: { enabled: true } } } });
});

afterAll(async () => {
  await daemon.cleanup();
});

describe('role bind user:<name> / group:<name>', () => {
  it('binds roles to users and groups, listed like any binding', async () => {
    expect(await ctl('role', 'bind', 'user:alice', 'operator')).toMatchObject({ code: 0, stdout: 'bound operator to user:alice\n' });
    expect(await ctl('role', 'bind', 'group:ops', 'viewer')).toMatchObject({ code: 0, stdout: 'bound viewer to group:ops\n' });
    const listed = await ctl('role', 'bindings', '--principal', 'user:alice');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(/user:alice\s*│\s*operator/);
    expect((await ctl('role', 'bindings', '--principal', 'group:ops')).stdout).toMatch(/group:ops\s*│\s*viewer/);
  });

  it('refuses a user or group name the impersonation headers could never carry, naming the field', async () => {
    for (const principal of ['user:Alice', 'group:', 'group:ops:admin', 'user:a_b']) {
      const refused = await ctl('role', 'bind', principal, 'operator');
      expect(refused.code, principal).toBe(1);
      expect(refused.stderr, principal).toMatch(/^debvisorctl: INVALID_ARGUMENT: principal: .* is not a valid name/);
    }
  });
});

describe('certificates never pose as users', () => {
  it('refuses a certificate whose principal is user:<name>, audited with the reason', async () => {
    const access = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, 'user:alice'));
    try {
      const err = await rejection(access.whoAmI({}, T));
      expect(err.code).toBe(Status.UNAUTHENTICATED);
      const record = await auditOf(daemon, 'AUTH_FAILED', traceIdOf(err));
      expect(String(record.reason)).toContain('client certificate principal "user:alice" is in the user: namespace');
    } finally {
      access.close();
    }
  });
});

describe('debvisorctl credentials and --as', () => {
  it('--api-key wins over DEBVISORCTL_CERT in the environment', async () => {
    const admin = await clientFor(AccessService, daemon);
    let secret: string;
    try {
      secret = (await admin.createApiKey({ description: 'cli', permissions: ['vm:list'] }, T)).secret;
    } finally {
      admin.close();
    }
    const me = await ctl('--api-key', secret, 'whoami', '-o', 'json');
    expect(me.code).toBe(0);
    expect(JSON.parse(me.stdout)).toMatchObject({ authMethod: 'api_key', apiKeyId: expect.any(String) as unknown });
    expect(JSON.parse((await ctl('whoami', '-o', 'json')).stdout)).toMatchObject({ authMethod: 'mtls' });
  });

  it('refuses --as with an API key, and invalid names, before calling (usage errors: exit 2)', async () => {
    expect(await ctl('--api-key', 'dvk_0000000000000000_x', '--as', 'alice', 'whoami')).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('--as needs a client certificate: API keys can never impersonate') as unknown,
    });
    expect(await ctl('--as', 'Alice', 'whoami')).toMatchObject({ code: 2, stderr: expect.stringMatching(/^debvisorctl: --as: "Alice" is not a valid name/) as unknown });
    expect(await ctl('--as-group', 'ops', 'whoami')).toMatchObject({ code: 2, stderr: 'debvisorctl: --as: required with --as-group\n' });
  });

  it('--as acts for the user: whoami shows both identities, and the user’s own key belongs to it', async () => {
    expect((await ctl('role', 'bind', 'user:dana', 'developer')).code).toBe(0);
    const me = await ctl('--as', 'dana', '--as-group', 'ops', '--as-group', 'qa', '--as-reason', 'ticket 7', 'whoami', '-o', 'json');
    expect(me.code, me.stderr).toBe(0);
    expect(JSON.parse(me.stdout)).toMatchObject({
      principalId: 'user:dana',
      impersonation: { impersonatedBy: daemon.pki.adminPrincipal, groups: ['group:ops', 'group:qa'], reason: 'ticket 7' },
    });
    const text = await ctl('--as', 'dana', 'whoami');
    expect(text.stdout).toContain(daemon.pki.adminPrincipal);
    const created = await ctl('--as', 'dana', 'apikey', 'create', '--permission', 'vm:list', '-o', 'json');
    expect(created.code, created.stderr).toBe(0);
    expect(JSON.stringify(JSON.parse(created.stdout))).toContain('user:dana');
  });
});
