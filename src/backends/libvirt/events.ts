// libvirt's domain events, from one long-lived `virsh event --all --loop --timestamp` per
// connection, supervised: restarted with backoff when it dies. The subscriber resyncs whenever a
// new process is connected, because events are lost while none is.
// Why virsh and not a native client: the one npm binding (`libvirt`, hooklift/node-libvirt) is a
// NAN C++ addon without releases for current Node, and libvirt's RPC protocol is not ours to
// re-implement (docs/vm-inventory.md).
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import type { StreamExit, StreamHandle } from '../exec.js';
import type { Libvirt } from './virsh.js';

/** One domain event line: `2026-12-07 17:57:31.911+0000: event 'lifecycle' for domain 'vm1': Started Booted`. */
export interface DomainEventLine {
  readonly time: Date;
  /** libvirt's event name: lifecycle, reboot, metadata-change, device-removed, ... */
  readonly event: string;
  readonly domain: string;
  /** What follows the domain, e.g. "Started Booted"; empty when nothing does. */
  readonly detail: string;
}

export type EventLine = { readonly kind: 'domain'; readonly value: DomainEventLine } | { readonly kind: 'ignored' } | { readonly kind: 'unknown' };

const DOMAIN_EVENT = /^(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d{3})([+-]\d{4}): event '([a-z0-9-]+)' for domain '(.+?)'(?:: (.*))?$/;
// virsh's own lines: the count it prints when it stops, and blank lines.
const IGNORED = /^(?:events received: \d+)?$/;

/** Parses one line of `virsh event --timestamp` output; never throws. */
export function parseEventLine(line: string): EventLine {
  const text = line.trimEnd();
  if (IGNORED.test(text)) return { kind: 'ignored' };
  const m = DOMAIN_EVENT.exec(text);
  if (!m) return { kind: 'unknown' };
  const [, date, clock, zone, event, domain, detail] = m as unknown as [string, string, string, string, string, string, string | undefined];
  const time = new Date(`${date}T${clock}${zone.slice(0, 3)}:${zone.slice(3)}`);
  if (Number.isNaN(time.getTime())) return { kind: 'unknown' };
  return { kind: 'domain', value: { time, event, domain, detail: detail ?? '' } };
}

export interface SubscriptionOptions {
  readonly libvirt: Libvirt;
  readonly log: Logger;
  readonly registry: Registry;
  /** A new process is connected and subscribed: resync now (events were lost in between). */
  readonly onConnected: () => void;
  /** The process died, before or after connecting. */
  readonly onDisconnected: (exit: StreamExit, stderr: string) => void;
  readonly onEvent: (event: DomainEventLine) => void;
  /** Restart delays: the first restart after `initialMs`, doubling up to `maxMs`; a run longer than `maxMs` resets it. */
  readonly backoff?: { readonly initialMs: number; readonly maxMs: number };
}

interface SubscriptionMetrics {
  readonly starts: Counter;
  readonly lines: Counter<'result'>;
}

const metricsByRegistry = new WeakMap<Registry, SubscriptionMetrics>();

function subscriptionMetrics(registry: Registry): SubscriptionMetrics {
  let metrics = metricsByRegistry.get(registry);
  if (!metrics) {
    metrics = {
      starts: new Counter({ name: 'libvirt_event_subscription_starts_total', help: 'virsh event processes started (the first, then restarts).', registers: [registry] }),
      lines: new Counter({
        name: 'libvirt_event_lines_total',
        help: 'Lines read from virsh event, by result: event, ignored, unknown (not understood; logged).',
        labelNames: ['result'] as const,
        registers: [registry],
      }),
    };
    for (const result of ['event', 'ignored', 'unknown']) metrics.lines.inc({ result }, 0);
    metricsByRegistry.set(registry, metrics);
  }
  return metrics;
}

const MAX_STDERR = 4096;

export class LibvirtEventSubscription {
  private handle: StreamHandle | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private failures = 0;
  private readonly metrics: SubscriptionMetrics;
  private readonly backoff: { readonly initialMs: number; readonly maxMs: number };

  constructor(private readonly options: SubscriptionOptions) {
    this.metrics = subscriptionMetrics(options.registry);
    this.backoff = options.backoff ?? { initialMs: 100, maxMs: 10_000 };
  }

  /** The running process's pid (tests kill it to see the restart). */
  get pid(): number | undefined {
    return this.handle?.pid;
  }

  start(): void {
    if (this.stopped || this.handle) return;
    const { libvirt, log } = this.options;
    // A random marker echoed once connected (virsh connects before running its commands, and
    // fails at once without a connection): from then on the subscription is registered.
    const ready = `debvisor-events-${randomBytes(6).toString('hex')}`;
    let connected = false;
    let stderr = '';
    const startedAt = performance.now();
    this.metrics.starts.inc();
    const handle = libvirt.executor.stream('virsh', ['--connect', libvirt.uri, `echo ${ready}; event --all --loop --timestamp`], {
      onStdoutLine: (line) => {
        if (!connected && line === ready) {
          connected = true;
          this.options.onConnected();
          return;
        }
        const parsed = parseEventLine(line);
        if (parsed.kind === 'domain') {
          this.metrics.lines.inc({ result: 'event' });
          this.options.onEvent(parsed.value);
        } else if (parsed.kind === 'ignored') {
          this.metrics.lines.inc({ result: 'ignored' });
        } else {
          this.metrics.lines.inc({ result: 'unknown' });
          log.warn({ line: line.slice(0, 512) }, 'libvirt event subscription: line not understood; ignored');
        }
      },
      onStderrLine: (line) => {
        if (stderr.length < MAX_STDERR) stderr += `${line}\n`;
      },
    });
    this.handle = handle;
    void handle.exited.then((exit) => {
      if (this.handle === handle) this.handle = undefined;
      if (this.stopped) return;
      const ranMs = performance.now() - startedAt;
      this.failures = connected && ranMs > this.backoff.maxMs ? 0 : this.failures + 1;
      const delay = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** (this.failures - 1));
      log.warn({ code: exit.code, signal: exit.signal, stderr: stderr.trim().slice(0, 512), restart_in_ms: delay }, 'libvirt event subscription ended; restarting');
      this.options.onDisconnected(exit, stderr);
      this.timer = setTimeout(() => this.start(), delay);
    });
  }

  /** Kills the process and stops restarting it. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.handle?.stop();
  }
}
