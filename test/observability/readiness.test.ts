import { HealthImplementation } from 'grpc-health-check';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { Readiness } from '../../src/observability/readiness.js';

async function readyValues(registry: Registry): Promise<Record<string, number>> {
  const metric = await registry.getSingleMetric('component_ready')?.get();
  return Object.fromEntries((metric?.values ?? []).map((v) => [String(v.labels.component), v.value]));
}

describe('Readiness', () => {
  it('exports every component from the start and follows each change', async () => {
    const registry = new Registry();
    const readiness = new Readiness(['tls', 'store', 'access'], new HealthImplementation(), [], registry);
    expect(await readyValues(registry)).toEqual({ tls: 0, store: 0, access: 0, crl: 1 });
    readiness.set('tls', true);
    readiness.set('store', true);
    readiness.set('access', true);
    expect(readiness.ready).toBe(true);
    expect(await readyValues(registry)).toEqual({ tls: 1, store: 1, access: 1, crl: 1 });
    readiness.set('store', false);
    expect(readiness.ready).toBe(false);
    expect(await readyValues(registry)).toEqual({ tls: 1, store: 0, access: 1, crl: 1 });
  });
});
