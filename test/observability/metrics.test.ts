// The chain's per-call metric paths (histogram cells, batched counts) must expose exactly
// what prom-client's own observe()/inc() would.
import { spawnSync } from 'node:child_process';
import { Counter, Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { Metrics } from '../../src/observability/metrics.js';

const SAMPLES = [0, 0.0004, 0.0005, 0.0007, 0.003, 0.02, 0.2, 0.9, 4, 29, 61, 299, 1000, 12.5, 1e-9];

/** The metric families of an exposition whose names start with `prefix`, without HELP/TYPE. */
function family(text: string, prefix: string): string[] {
  return text
    .split('\n')
    .filter((line) => line.startsWith(prefix))
    .sort();
}

describe('Metrics', () => {
  it('histogram cells expose the same buckets, sum and count as prom-client observe()', async () => {
    const metrics = new Metrics();
    const reference = new Registry();
    const plain = new Histogram({
      name: 'rpc_request_duration_seconds',
      help: 'x',
      labelNames: ['service', 'method'] as const,
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [reference],
    });
    const cell = metrics.rpcDuration.cell({ service: 'debvisor.v1.AccessService', method: 'WhoAmI' });
    const other = metrics.rpcDuration.cell({ service: 'debvisor.v1.VmService', method: 'Get' });
    for (const value of SAMPLES) {
      cell.observe(value);
      plain.observe({ service: 'debvisor.v1.AccessService', method: 'WhoAmI' }, value);
    }
    other.observe(0.01);
    plain.observe({ service: 'debvisor.v1.VmService', method: 'Get' }, 0.01);
    const expected = family(await reference.metrics(), 'rpc_request_duration_seconds');
    expect(family(await metrics.registry.metrics(), 'rpc_request_duration_seconds')).toEqual(expected);

    // Later observations add to what was published; a scrape with nothing new changes nothing.
    expect(family(await metrics.registry.metrics(), 'rpc_request_duration_seconds')).toEqual(expected);
    cell.observe(0.3);
    plain.observe({ service: 'debvisor.v1.AccessService', method: 'WhoAmI' }, 0.3);
    expect(family(await metrics.registry.metrics(), 'rpc_request_duration_seconds')).toEqual(family(await reference.metrics(), 'rpc_request_duration_seconds'));
    expect((await metrics.grpcHandling.get()).values).toEqual([]);
  });

  it('counter cells show in their counter on every read, next to plain inc()', async () => {
    const metrics = new Metrics();
    const reference = new Registry();
    const plain = new Counter({ name: 'auth_attempts_total', help: 'x', labelNames: ['method', 'result'] as const, registers: [reference] });
    // Metrics exports every outcome at 0 from the start, in this order.
    for (const [method, result] of [['mtls', 'success'], ['mtls', 'failure'], ['api_key', 'success'], ['api_key', 'failure'], ['none', 'failure'], ['blocked', 'failure']]) {
      plain.inc({ method, result }, 0);
    }
    const mtls = metrics.authAttempts.cell({ method: 'mtls', result: 'success' });
    for (let i = 0; i < 3; i++) mtls.inc();
    metrics.authAttempts.cell({ method: 'api_key', result: 'success' }).inc();
    // The same label set in another order is the same cell.
    expect(metrics.authAttempts.cell({ result: 'success', method: 'mtls' })).toBe(mtls);
    metrics.authAttempts.inc({ method: 'none', result: 'failure' });
    plain.inc({ method: 'mtls', result: 'success' }, 3);
    plain.inc({ method: 'api_key', result: 'success' });
    plain.inc({ method: 'none', result: 'failure' });
    expect(family(await metrics.registry.metrics(), 'auth_attempts_total')).toEqual(family(await reference.metrics(), 'auth_attempts_total'));
    mtls.inc();
    expect((await metrics.authAttempts.get()).values.find((v) => v.labels.method === 'mtls')?.value).toBe(4);
  });

  it('passes promtool check metrics, and exports the alerts\' counters at 0 from the start', async () => {
    const text = await new Metrics().registry.metrics();
    const check = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
    expect(`${check.stdout}${check.stderr}`.trim()).toBe('');
    expect(check.status).toBe(0);
    expect(text).not.toMatch(/^nodejs_active_\w+_total/m);
    for (const line of ['auth_attempts_total{method="mtls",result="failure"} 0', 'auth_attempts_total{method="none",result="failure"} 0', 'rate_limit_violations_total{principal="global"} 0']) {
      expect(text.split('\n')).toContain(line);
    }
    expect(text).toMatch(/^debvisor_build_info\{version="[^"]+",node_version="[^"]+"\} 1$/m);
  });
});
