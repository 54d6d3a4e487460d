// The shipped alert rules: valid, unit-tested alert by alert with promtool, every alert
// documented in the runbooks, and every metric they read exported by the daemon.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const ROOT = join(import.meta.dirname, '..', '..');
const RULES = join(ROOT, 'prometheus', 'debvisor-rpcd.rules.yml');
const RULE_TESTS = join(ROOT, 'prometheus', 'debvisor-rpcd.rules.test.yml');

interface Rule {
  readonly alert?: string;
  readonly record?: string;
  readonly expr: string;
  readonly annotations?: Record<string, string>;
}
const rules: Rule[] = (parse(readFileSync(RULES, 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);
const alerts = rules.filter((rule) => rule.alert !== undefined);

function promtool(...args: string[]): string {
  return execFileSync('promtool', args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function sourceText(dir: string): string {
  return readdirSync(dir)
    .map((name) => join(dir, name))
    .map((path) => (statSync(path).isDirectory() ? sourceText(path) : path.endsWith('.ts') ? readFileSync(path, 'utf8') : ''))
    .join('\n');
}

describe('alert rules', () => {
  it('pass promtool check rules', () => {
    expect(promtool('check', 'rules', RULES)).toMatch(/SUCCESS/);
  });

  it('pass their promtool unit tests', () => {
    expect(promtool('test', 'rules', RULE_TESTS)).toMatch(/SUCCESS/);
  });

  it('every alert is unit-tested, firing at least once', () => {
    const tests = readFileSync(RULE_TESTS, 'utf8');
    for (const { alert } of alerts) expect(tests, `${alert} has no firing test`).toMatch(new RegExp(`alertname: ${alert}\\n\\s+exp_alerts:\\n\\s+- exp_labels`));
  });

  it('every alert has a summary, a description and a runbook section that exists', () => {
    const runbooks = readFileSync(join(ROOT, 'docs', 'runbooks', 'alerts.md'), 'utf8');
    for (const { alert, annotations } of alerts) {
      expect(annotations?.summary, alert).toBeTruthy();
      expect(annotations?.description, alert).toBeTruthy();
      const anchor = annotations?.runbook_url?.split('#')[1];
      expect(anchor, alert).toBe(alert?.toLowerCase());
      expect(runbooks, `docs/runbooks/alerts.md has no section for ${alert}`).toMatch(new RegExp(`^## ${alert}$`, 'm'));
    }
  });

  it('read only metrics the daemon exports', () => {
    const source = sourceText(join(ROOT, 'src'));
    const names = new Set(rules.flatMap((rule) => [...rule.expr.matchAll(/\b([a-z_]+_(?:total|seconds|ready))\b/g)].map((m) => m[1] as string)));
    expect(names.size).toBeGreaterThan(5);
    for (const name of names) expect(source, `no metric named ${name} under src/`).toContain(`name: '${name}'`);
  });
});
