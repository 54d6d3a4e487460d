// What must be true before the daemon says SERVING: each component reports in,
// and grpc health and /readyz both read this one state.
// Most components gate the whole daemon; a component scoped to services (libvirt: VmService)
// gates only those, so a host whose libvirt is down still serves everything else.
import type { HealthImplementation } from 'grpc-health-check';
import { Gauge, type Registry } from 'prom-client';

export const COMPONENTS = ['tls', 'store', 'access', 'crl', 'libvirt'] as const;
export type Component = (typeof COMPONENTS)[number];

export interface ReadinessOptions {
  /** Service name → the components only it needs; those components leave the rest of the daemon alone. */
  readonly serviceComponents?: Readonly<Record<string, readonly Component[]>>;
}

export class Readiness {
  private readonly pending = new Set<Component>();
  /** Why a component is not ready, or a warning about one that is; shown by /readyz. */
  private readonly details = new Map<Component, string>();
  private draining = false;
  private readonly gauge: Gauge<'component'> | undefined;
  /** Components that gate only some services. */
  private readonly scoped: ReadonlySet<Component>;
  private readonly serviceComponents: Readonly<Record<string, readonly Component[]>>;

  constructor(
    required: readonly Component[],
    private readonly health: HealthImplementation,
    private readonly services: readonly string[],
    registry?: Registry,
    options: ReadinessOptions = {},
  ) {
    this.serviceComponents = options.serviceComponents ?? {};
    this.scoped = new Set(Object.values(this.serviceComponents).flat());
    for (const component of required) this.pending.add(component);
    // Every component is exported from the start, so an alert sees a store that was never reachable.
    this.gauge =
      registry &&
      new Gauge({
        name: 'component_ready',
        help: 'Whether each component the daemon needs is ready (1) or not (0): tls, store, access, crl, libvirt (VmService only).',
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

  /** "component: detail" lines for /readyz, then one per service that is not serving while the daemon is. */
  get detailLines(): string[] {
    const lines = [...this.details].map(([component, detail]) => `${component}: ${detail}`);
    if (this.ready) for (const [service, waiting] of this.servicesNotServing()) lines.push(`${service}: NOT_SERVING (${waiting.join(', ')})`);
    return lines;
  }

  /** Services held back by a scoped component, with those components. */
  private servicesNotServing(): [string, Component[]][] {
    return Object.entries(this.serviceComponents)
      .map(([service, components]): [string, Component[]] => [service, components.filter((c) => this.pending.has(c))])
      .filter(([, waiting]) => waiting.length > 0);
  }

  /** Shutdown: report NOT_SERVING so load balancers stop sending new calls. */
  drain(): void {
    this.draining = true;
    this.publish();
  }

  /** The daemon as a whole (the '' health service and /readyz): scoped components do not count. */
  get ready(): boolean {
    return !this.draining && this.notReady.length === 0;
  }

  get notReady(): Component[] {
    return [...this.pending].filter((c) => !this.scoped.has(c));
  }

  /** SERVING when the daemon is ready and so is every component scoped to `service`. */
  serviceStatus(service: string): 'SERVING' | 'NOT_SERVING' {
    const own = this.serviceComponents[service] ?? [];
    return this.ready && own.every((c) => !this.pending.has(c)) ? 'SERVING' : 'NOT_SERVING';
  }

  private publish(): void {
    this.health.setStatus('', this.ready ? 'SERVING' : 'NOT_SERVING');
    for (const service of this.services) this.health.setStatus(service, this.serviceStatus(service));
    for (const component of COMPONENTS) this.gauge?.set({ component }, this.pending.has(component) ? 0 : 1);
  }
}
