import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, configLeaves, loadConfig } from '../../src/config/load.js';
import { configSchema } from '../../src/config/schema.js';

const EXAMPLE = 'config/rpcd.example.yaml';
const dir = mkdtempSync(join(tmpdir(), 'debvisor-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function writeConfig(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

const noFile = () => false;

describe('config', () => {
  it('the example config is valid and equals the built-in defaults (but for the host name)', () => {
    const { config } = loadConfig({ path: EXAMPLE, env: {} });
    const defaults = configSchema.parse({});
    expect({ ...config, node: { ...config.node, name: defaults.node.name } }).toEqual(defaults);
  });

  it('the example config documents every key', () => {
    const example: unknown = parse(readFileSync(EXAMPLE, 'utf8'));
    for (const { path } of configLeaves().values()) {
      let node: unknown = example;
      for (const key of path) node = (node as Record<string, unknown> | undefined)?.[key];
      expect(node, path.join('.')).toBeDefined();
    }
  });

  it('runs on defaults when no file exists', () => {
    const { config, file } = loadConfig({ env: {} }, noFile);
    expect(file).toBeUndefined();
    expect(config.server.listen).toBe('127.0.0.1:7443');
    expect(config.server.max_request_bytes).toBe(1024 * 1024);
  });

  it('names the file, the key path and what was expected for a wrong type', () => {
    const file = writeConfig('wrong-type.yaml', 'server:\n  max_request_bytes: big\n');
    const problems = problemsOf(() => loadConfig({ path: file, env: {} }));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toContain(file);
    expect(problems[0]).toContain('server.max_request_bytes');
    expect(problems[0]).toMatch(/expected number/);
  });

  it('rejects unknown keys so typos do not pass silently', () => {
    const file = writeConfig('typo.yaml', 'server:\n  listne: 0.0.0.0:7443\n');
    expect(problemsOf(() => loadConfig({ path: file, env: {} }))[0]).toMatch(/server.*unknown key\(s\) listne/);
  });

  it('reports YAML syntax errors with a line number', () => {
    const file = writeConfig('broken.yaml', 'server:\n  listen: [unclosed\n');
    expect(problemsOf(() => loadConfig({ path: file, env: {} }))[0]).toMatch(/broken\.yaml: YAML error at line \d+/);
  });

  it('reports a missing explicit config file', () => {
    expect(problemsOf(() => loadConfig({ path: join(dir, 'absent.yaml'), env: {} }))[0]).toMatch(/absent\.yaml: cannot read config file: ENOENT/);
  });

  it('applies DEBVISOR_RPCD_* overrides over the file, with types from the schema', () => {
    const file = writeConfig('base.yaml', 'server:\n  listen: 127.0.0.1:1000\nlog:\n  level: warn\n');
    const { config } = loadConfig({
      path: file,
      env: {
        DEBVISOR_RPCD_SERVER_LISTEN: '0.0.0.0:7443',
        DEBVISOR_RPCD_SERVER_MAX_REQUEST_BYTES: '2048',
        DEBVISOR_RPCD_AUTH_BOOTSTRAP_ADMINS: 'spiffe://debvisor/admin/a, spiffe://debvisor/admin/b',
      },
    });
    expect(config.server.listen).toBe('0.0.0.0:7443');
    expect(config.server.max_request_bytes).toBe(2048);
    expect(config.log.level).toBe('warn');
    expect(config.auth.bootstrap_admins).toEqual(['spiffe://debvisor/admin/a', 'spiffe://debvisor/admin/b']);
  });

  it('names the environment variable when an override is invalid or unknown', () => {
    const problems = problemsOf(() => loadConfig({ env: { DEBVISOR_RPCD_SERVER_MAX_REQUEST_BYTES: 'abc', DEBVISOR_RPCD_SERVR_LISTEN: 'x' } }, noFile));
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^environment DEBVISOR_RPCD_SERVR_LISTEN: unknown setting/),
        expect.stringMatching(/^environment DEBVISOR_RPCD_SERVER_MAX_REQUEST_BYTES: server\.max_request_bytes: expected number/),
      ]),
    );
  });

  it('validates listen addresses', () => {
    expect(problemsOf(() => loadConfig({ env: { DEBVISOR_RPCD_HTTP_LISTEN: 'nonsense' } }, noFile))[0]).toMatch(/http\.listen: expected host:port/);
  });
});
