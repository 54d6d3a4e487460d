// The impersonation step on its own (src/chain/impersonation.ts): which headers it honours
// for whom, what it refuses and records, and what the call then runs as. The real daemon's
// side, over mTLS and for every RPC, is test/e2e/impersonation.test.ts.
import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../../src/audit/types.js';
import { BUILTIN_ROLES, type Role } from '../../src/authz/roles.js';
import { impersonation, type ImpersonationDeps, type SessionVerifier } from '../../src/chain/impersonation.js';
import type { StepCall } from '../../src/chain/step.js';
import { Metrics } from '../../src/observability/metrics.js';
import type { CallState } from '../../src/rpc/context.js';
import { InvalidArgumentError, RpcError, UnauthenticatedError } from '../../src/rpc/errors.js';
import type { Principal } from '../../src/rpc/principal.js';

const PANEL: Principal = Object.freeze({
  id: 'spiffe://debvisor/panel/web',
  kind: 'certificate',
  certificate: { fingerprintSha256: 'ab'.repeat(32), serialNumber: '01', notAfter: new Date(0) },
});
const KEY: Principal = Object.freeze({ id: 'spiffe://debvisor/panel/web', kind: 'api_key', apiKey: { id: 'k1', permissions: ['*'], resourceGlobs: [] } });
const CUSTOM: Record<string, Role> = {
  impersonator: { name: 'impersonator', description: '', permissions: ['access:impersonate'], deny: [], builtin: false, resourceGlobs: [] },
  'ci-only': { name: 'ci-only', description: '', permissions: ['access:impersonate'], deny: [], builtin: false, resourceGlobs: [{ kind: 'user', glob: 'ci-*' }] },
};
const BINDINGS: Record<string, readonly string[]> = {
  [PANEL.id]: ['impersonator', 'operator'],
  'user:alice': ['viewer'],
  'group:ops': ['operator'],
  'spiffe://debvisor/panel/ci': ['ci-only'],
  'spiffe://debvisor/panel/plain': ['operator'],
};

interface Harness {
  readonly deps: ImpersonationDeps;
  readonly records: AuditEventInput[];
  readonly settings: { enabled: boolean; require_session: boolean };
}

function harness(verifySession: SessionVerifier = () => 'session-1'): Harness {
  const records: AuditEventInput[] = [];
  const settings = { enabled: true, require_session: false };
  const roleNamesOf = (principal: string) => BINDINGS[principal] ?? [];
  const deps: ImpersonationDeps = {
    settings: () => settings,
    roleNamesOf,
    roleNamesOfPrincipal: (principal) => [...new Set([principal.id, ...(principal.delegation?.groups ?? [])].flatMap(roleNamesOf))].sort(),
    roles: (names) => names.flatMap((name) => BUILTIN_ROLES.get(name) ?? CUSTOM[name] ?? []),
    isBootstrapAdmin: () => false,
    verifySession,
    audit: { write: (event: AuditEventInput) => void records.push(event) } as unknown as ImpersonationDeps['audit'],
    metrics: new Metrics(),
    sessionlessMethods: new Set(['/debvisor.v1.AccessService/CreateUserSession']),
  };
  return { deps, records, settings };
}

function callWith(headers: [string, string][], path = '/debvisor.v1.VmService/ListVms'): StepCall {
  const metadata = new Metadata();
  for (const [name, value] of headers) metadata.add(name, value);
  return { path, metadata } as unknown as StepCall;
}

function stateOf(caller: Principal): CallState {
  return { traceId: 't'.repeat(32), startedAt: 0, path: '/p', peer: '127.0.0.1:1', principal: caller, roles: BINDINGS[caller.id] ?? [] };
}

/** Runs the step; returns what it threw, if anything. */
function run(h: Harness, caller: Principal, call: StepCall, state = stateOf(caller)): { state: CallState; error: unknown } {
  const step = impersonation(h.deps);
  try {
    void step.onRequest?.(state, call);
    return { state, error: undefined };
  } catch (error) {
    return { state, error };
  }
}

describe('impersonation step', () => {
  it('leaves a call without impersonation headers as it is, and records nothing', () => {
    const h = harness();
    const { state, error } = run(h, PANEL, callWith([['user-agent', 'x']]));
    expect(error).toBeUndefined();
    expect(state.principal).toBe(PANEL);
    expect(state.impersonatorRoles).toBeUndefined();
    expect(h.records).toEqual([]);
  });

  it('runs the call as the user with its groups’ roles, keeps the impersonator’s, strips the headers, records the first use', () => {
    const h = harness();
    const step = impersonation(h.deps);
    const headers: [string, string][] = [
      ['impersonate-user', 'alice'],
      ['impersonate-group', 'qa, ops'],
      ['impersonate-group', 'ops'],
      ['impersonate-reason', 'ticket 9'],
    ];
    const first = stateOf(PANEL);
    const call = callWith(headers);
    void step.onRequest?.(first, call);
    expect(first.principal).toMatchObject({ id: 'user:alice', kind: 'user', delegation: { by: PANEL, groups: ['group:ops', 'group:qa'], reason: 'ticket 9' } });
    expect(first.roles).toEqual(['operator', 'viewer']);
    expect(first.impersonatorRoles).toEqual(['impersonator', 'operator']);
    expect(call.metadata.getMap()).toEqual({});
    const second = stateOf(PANEL);
    void step.onRequest?.(second, callWith(headers));
    // One principal object per claim, so per-principal caches (audit text, role lists) keep working.
    expect(second.principal).toBe(first.principal);
    expect(h.records.filter((r) => r.type === 'SECURITY')).toHaveLength(1);
    expect(h.records[0]).toMatchObject({ type: 'SECURITY', object: 'user:alice', principal: { id: 'user:alice', impersonated_by: { id: PANEL.id } } });
  });

  it('refuses an API key, audited SUSPICIOUS, even with malformed headers', () => {
    for (const headers of [[['impersonate-user', 'alice']], [['impersonate-user', 'Not Valid']]] as [string, string][][]) {
      const h = harness();
      const { state, error } = run(h, KEY, callWith(headers));
      expect(error).toBeInstanceOf(RpcError);
      expect((error as RpcError).code).toBe('PERMISSION_DENIED');
      expect(state.principal).toBe(KEY);
      expect(h.records.map((r) => r.type)).toEqual(['SUSPICIOUS']);
    }
  });

  it('refuses when impersonation is disabled, and a certificate without access:impersonate', () => {
    const h = harness();
    h.settings.enabled = false;
    const off = run(h, PANEL, callWith([['impersonate-user', 'alice']]));
    expect((off.error as RpcError).message).toContain('impersonation is disabled');
    h.settings.enabled = true;
    const plain: Principal = { ...PANEL, id: 'spiffe://debvisor/panel/plain' };
    const refused = run(h, plain, callWith([['impersonate-user', 'alice']]));
    expect((refused.error as RpcError).code).toBe('PERMISSION_DENIED');
    expect(refused.state.principal).toBe(plain);
    expect(h.records.map((r) => r.type)).toEqual(['AUTHZ_DENIED', 'AUTHZ_DENIED']);
  });

  it('honours a role’s USER globs: ci-* yes, alice no', () => {
    const h = harness();
    const ci: Principal = { ...PANEL, id: 'spiffe://debvisor/panel/ci' };
    expect(run(h, ci, callWith([['impersonate-user', 'ci-runner']])).state.principal?.id).toBe('user:ci-runner');
    const refused = run(h, ci, callWith([['impersonate-user', 'alice']]));
    expect((refused.error as RpcError).code).toBe('PERMISSION_DENIED');
    expect(h.records.at(-1)?.reason).toContain('outside_role_scope');
  });

  it('refuses bad headers with INVALID_ARGUMENT naming the header', () => {
    const cases: [[string, string][], string][] = [
      [[['impersonate-user', 'alice'], ['impersonate-user', 'bob']], 'impersonate-user'],
      [[['impersonate-group', 'ops']], 'impersonate-user'],
      [[['impersonate-user', '-alice']], 'impersonate-user'],
      [[['impersonate-user', 'alice'], ['impersonate-group', 'OPS']], 'impersonate-group'],
      [[['impersonate-user', 'alice'], ['impersonate-group', Array.from({ length: 33 }, (_, i) => `g${i}`).join(',')]], 'impersonate-group'],
      [[['impersonate-user', 'alice'], ['impersonate-reason', 'r'.repeat(257)]], 'impersonate-reason'],
      [[['impersonate-user', 'alice'], ['impersonate-reason', 'a'], ['impersonate-reason', 'b']], 'impersonate-reason'],
    ];
    for (const [headers, header] of cases) {
      const { error, state } = run(harness(), PANEL, callWith(headers));
      expect(error, JSON.stringify(headers)).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).message).toContain(header);
      expect(state.principal).toBe(PANEL);
    }
  });

  it('with sessions required: refuses a call without one (except CreateUserSession) and a token the verifier refuses', () => {
    const h = harness((token) => {
      if (token !== 'good') throw new UnauthenticatedError('user session s2 is revoked');
      return 's1';
    });
    h.settings.require_session = true;
    const missing = run(h, PANEL, callWith([['impersonate-user', 'alice']]));
    expect((missing.error as RpcError).code).toBe('UNAUTHENTICATED');
    const creating = run(h, PANEL, callWith([['impersonate-user', 'alice']], '/debvisor.v1.AccessService/CreateUserSession'));
    expect(creating.error).toBeUndefined();
    const revoked = run(h, PANEL, callWith([['impersonate-user', 'alice'], ['impersonate-session', 'bad']]));
    expect((revoked.error as RpcError).code).toBe('UNAUTHENTICATED');
    expect(h.records.filter((r) => r.type === 'AUTH_FAILED').map((r) => r.reason)).toEqual([
      expect.stringContaining('without a session') as unknown,
      expect.stringContaining('is revoked') as unknown,
    ]);
    const good = run(h, PANEL, callWith([['impersonate-user', 'alice'], ['impersonate-session', 'good']]));
    expect(good.state.principal?.delegation?.sessionId).toBe('s1');
  });
});
