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
    expect(await readyValues(registry)).toEqual({ tls: 0, store: 0, access: 0, crl: 1, libvirt: 1 });
    readiness.set('tls', true);
    readiness.set('store', true);
    readiness.set('access', true);
    expect(readiness.ready).toBe(true);
    expect(await readyValues(registry)).toEqual({ tls: 1, store: 1, access: 1, crl: 1, libvirt: 1 });
    readiness.set('store', false);
    expect(readiness.ready).toBe(false);
    expect(await readyValues(registry)).toEqual({ tls: 1, store: 0, access: 1, crl: 1, libvirt: 1 });
  });

  it('a component scoped to a service holds back only that service', () => {
    const statuses = new Map<string, string>();
    const recorder = { setStatus: (service: string, s: string) => statuses.set(service, s) } as unknown as HealthImplementation;
    const readiness = new Readiness(['tls', 'libvirt'], recorder, ['debvisor.v1.VmService', 'debvisor.v1.AccessService'], undefined, {
      serviceComponents: { 'debvisor.v1.VmService': ['libvirt'] },
    });
    readiness.set('tls', true);
    expect(readiness.ready).toBe(true);
    expect(readiness.notReady).toEqual([]);
    expect(Object.fromEntries(statuses)).toEqual({ '': 'SERVING', 'debvisor.v1.VmService': 'NOT_SERVING', 'debvisor.v1.AccessService': 'SERVING' });
    readiness.set('libvirt', false, 'libvirt unreachable');
    expect(readiness.detailLines).toEqual(['libvirt: libvirt unreachable', 'debvisor.v1.VmService: NOT_SERVING (libvirt)']);
    readiness.set('libvirt', true);
    expect(statuses.get('debvisor.v1.VmService')).toBe('SERVING');
    expect(readiness.detailLines).toEqual([]);
    // A daemon-wide component still takes every service down.
    readiness.set('tls', false);
    expect(Object.fromEntries(statuses)).toEqual({ '': 'NOT_SERVING', 'debvisor.v1.VmService': 'NOT_SERVING', 'debvisor.v1.AccessService': 'NOT_SERVING' });
  });
});
