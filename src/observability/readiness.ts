// What must be true before the daemon says SERVING: each component reports in,
// and grpc health and /readyz both read this one state.
import type { HealthImplementation } from 'grpc-health-check';
import { Gauge, type Registry } from 'prom-client';

export const COMPONENTS = ['tls', 'store', 'access', 'crl'] as const;
export type Component = (typeof COMPONENTS)[number];

export class Readiness {
  private readonly pending = new Set<Component>();
  /** Why a component is not ready, or a warning about one that is; shown by /readyz. */
  private readonly details = new Map<Component, string>();
  private draining = false;
  private readonly gauge: Gauge<'component'> | undefined;

  constructor(
    required: readonly Component[],
    private readonly health: HealthImplementation,
    private readonly services: readonly string[],
    registry?: Registry,
  ) {
    for (const component of required) this.pending.add(component);
    // Every component is exported from the start, so an alert sees a store that was never reachable.
    this.gauge =
      registry &&
      new Gauge({
        name: 'component_ready',
        help: 'Whether each component the daemon needs is ready (1) or not (0): tls, store, access, crl.',
        labelNames: ['component'] as const,
        registers: [registry],
      });
    this.publish();
  }

  set(component: Component, ready: boolean, detail?: string): void {
    if (ready) this.pending.delete(component);
    else this.pending.add(component);
    this.note(component, detail);
    this.publish();
  }

  /** A detail for /readyz that does not change readiness (e.g. a refused CRL while the old one holds). */
  note(component: Component, detail: string | undefined): void {
    if (detail === undefined) this.details.delete(component);
    else this.details.set(component, detail);
  }

  /** "component: detail" lines for /readyz. */
  get detailLines(): string[] {
    return [...this.details].map(([component, detail]) => `${component}: ${detail}`);
  }

  /** Shutdown: report NOT_SERVING so load balancers stop sending new calls. */
  drain(): void {
    this.draining = true;
    this.publish();
  }

  get ready(): boolean {
    return !this.draining && this.pending.size === 0;
  }

  get notReady(): Component[] {
    return [...this.pending];
  }

  private publish(): void {
    const status = this.ready ? 'SERVING' : 'NOT_SERVING';
    for (const service of ['', ...this.services]) this.health.setStatus(service, status);
    for (const component of COMPONENTS) this.gauge?.set({ component }, this.pending.has(component) ? 0 : 1);
  }
}
