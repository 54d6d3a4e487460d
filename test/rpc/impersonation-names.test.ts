// The one rule for impersonated names, shared by the daemon's identity step, BindRole and
// debvisorctl's --as flags: which header is wrong, and why.
import { describe, expect, it } from 'vitest';
import {
  headerValues,
  impersonatedKindOf,
  impersonatedPrincipalProblem,
  impersonationProblem,
  MAX_GROUPS,
  MAX_REASON_BYTES,
  USER_NAME,
} from '../../src/rpc/impersonation-names.js';

describe('USER_NAME', () => {
  it('accepts RFC 1123-like names of 1 to 64 characters', () => {
    for (const name of ['a', '0', 'alice', 'ci-runner-7', 'j.doe', 'a'.repeat(64)]) expect(USER_NAME.test(name), name).toBe(true);
  });

  it('refuses upper case, edges other than letters and digits, other characters and over 64 characters', () => {
    for (const name of ['', 'Alice', '-a', 'a-', '.a', 'a.', 'a_b', 'a b', 'a:b', 'a,b', 'a@example', 'ä', 'a'.repeat(65), 'alice\n']) {
      expect(USER_NAME.test(name), JSON.stringify(name)).toBe(false);
    }
  });
});

describe('impersonationProblem', () => {
  it('accepts no claim at all, and a well-formed one', () => {
    expect(impersonationProblem({ groups: [] })).toBeUndefined();
    const full = { user: 'alice', groups: ['ops', 'dev'], reason: 'panel request 42', session: 'dvs_abc.def' };
    expect(impersonationProblem(full)).toBeUndefined();
    expect(impersonationProblem({ user: 'alice', groups: Array.from({ length: MAX_GROUPS }, (_, i) => `g${i}`) })).toBeUndefined();
    expect(impersonationProblem({ user: 'alice', groups: [], reason: 'x'.repeat(MAX_REASON_BYTES) })).toBeUndefined();
  });

  it('names impersonate-user for an invalid user, or for other headers without one', () => {
    expect(impersonationProblem({ user: 'Alice', groups: [] })).toMatchObject({ header: 'impersonate-user', problem: expect.stringContaining('"Alice" is not a valid name') as unknown });
    expect(impersonationProblem({ user: '', groups: [] })?.header).toBe('impersonate-user');
    expect(impersonationProblem({ groups: ['ops'] })).toEqual({ header: 'impersonate-user', problem: 'required with impersonate-group' });
    expect(impersonationProblem({ groups: [], reason: 'why' })).toEqual({ header: 'impersonate-user', problem: 'required with impersonate-reason' });
    expect(impersonationProblem({ groups: [], session: 't' })).toEqual({ header: 'impersonate-user', problem: 'required with impersonate-session' });
  });

  it('names impersonate-group for an invalid group or more than 32', () => {
    expect(impersonationProblem({ user: 'alice', groups: ['ops', 'group:ops'] })?.header).toBe('impersonate-group');
    expect(impersonationProblem({ user: 'alice', groups: Array.from({ length: MAX_GROUPS + 1 }, (_, i) => `g${i}`) })).toEqual({
      header: 'impersonate-group',
      problem: 'at most 32 groups, got 33',
    });
  });

  it('names impersonate-reason for a reason over 256 bytes or outside printable ASCII', () => {
    expect(impersonationProblem({ user: 'alice', groups: [], reason: 'x'.repeat(MAX_REASON_BYTES + 1) })).toEqual({ header: 'impersonate-reason', problem: 'must be at most 256 bytes' });
    for (const reason of ['line\nbreak', 'esc\u001b[2J', 'café']) {
      expect(impersonationProblem({ user: 'alice', groups: [], reason })?.header, JSON.stringify(reason)).toBe('impersonate-reason');
    }
  });

  it('names impersonate-session for an empty or non-ASCII token', () => {
    expect(impersonationProblem({ user: 'alice', groups: [], session: '' })?.header).toBe('impersonate-session');
    expect(impersonationProblem({ user: 'alice', groups: [], session: 'tök' })?.header).toBe('impersonate-session');
  });

  it('quotes a long bad name shortened', () => {
    const problem = impersonationProblem({ user: 'x'.repeat(1000), groups: [] })?.problem ?? '';
    expect(problem.length).toBeLessThan(300);
  });
});

describe('headerValues', () => {
  it('splits the "a, b" value HTTP/2 makes of a repeated header, and keeps separate values apart', () => {
    expect(headerValues(['ops, dev'])).toEqual(['ops', 'dev']);
    expect(headerValues(['ops', 'dev,qa'])).toEqual(['ops', 'dev', 'qa']);
    expect(headerValues([])).toEqual([]);
  });
});

describe('impersonated principal ids', () => {
  it('knows user: and group: ids, and nothing else', () => {
    expect(impersonatedKindOf('user:alice')).toBe('user');
    expect(impersonatedKindOf('group:ops')).toBe('group');
    for (const id of ['alice', 'spiffe://debvisor/panel/web-panel', 'users:alice', 'User:alice']) expect(impersonatedKindOf(id), id).toBeUndefined();
  });

  it('checks the name part of user: and group: ids only', () => {
    expect(impersonatedPrincipalProblem('user:alice')).toBeUndefined();
    expect(impersonatedPrincipalProblem('group:operators')).toBeUndefined();
    expect(impersonatedPrincipalProblem('spiffe://debvisor/Anything_Goes')).toBeUndefined();
    expect(impersonatedPrincipalProblem('user:')).toMatch(/not a valid name/);
    expect(impersonatedPrincipalProblem('user:Alice')).toMatch(/"Alice" is not a valid name/);
    expect(impersonatedPrincipalProblem('group:ops:admin')).toMatch(/not a valid name/);
  });
});
