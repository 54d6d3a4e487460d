// What must be true before the daemon says SERVING: each component reports in,
// and grpc health and /readyz both read this one state.
import type { HealthImplementation } from 'grpc-health-check';

export type Component = 'tls' | 'store' | 'access' | 'crl';

export class Readiness {
  private readonly pending = new Set<Component>();
  /** Why a component is not ready, or a warning about one that is; shown by /readyz. */
  private readonly details = new Map<Component, string>();
  private draining = false;

  constructor(
    required: readonly Component[],
    private readonly health: HealthImplementation,
    private readonly services: readonly string[],
  ) {
    for (const component of required) this.pending.add(component);
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
  }
}
