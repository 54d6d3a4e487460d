// What the config file may say about authorization. It holds no permissions: roles are
// written through AccessService.PutRole, where permissions are checked against the API.
// It binds principals to roles by name; a name that cannot be a role refuses start-up.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/load.js';

const dir = mkdtempSync(join(tmpdir(), 'debvisor-auth-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function problemsOf(name: string, text: string): string[] {
  const file = join(dir, name);
  writeFileSync(file, text);
  try {
    loadConfig({ path: file, env: {} });
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  return [];
}

describe('auth config', () => {
  it('accepts role names in default_bindings', () => {
    expect(problemsOf('ok.yaml', 'auth:\n  default_bindings:\n    "spiffe://debvisor/panel": [operator, ci-runner]\n')).toEqual([]);
  });

  it('refuses a default binding that is not a role name, naming the key and the value', () => {
    const problems = problemsOf('perm.yaml', 'auth:\n  default_bindings:\n    "spiffe://debvisor/panel": ["storage:snapshot:prune"]\n');
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain('auth.default_bindings');
    expect(problems[0]).toContain('spiffe://debvisor/panel');
    expect(problems[0]).toContain('a role name');
  });

  it('has no place for roles or permissions: an auth.roles section is refused', () => {
    const problems = problemsOf('roles.yaml', 'auth:\n  roles:\n    ci:\n      permissions: ["vm:strat"]\n');
    expect(problems[0]).toMatch(/auth.*unknown key\(s\) roles/);
  });
});
