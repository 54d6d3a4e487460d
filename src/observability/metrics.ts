// Every Prometheus metric the daemon exports, in one registry.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type CounterConfiguration, type HistogramConfiguration } from 'prom-client';
import { VERSION } from '../version.js';

/** A counter of one fixed label set, for the chain's per-call counts. */
export interface CounterCell {
  inc(): void;
}

/** A histogram of one fixed label set, for the chain's per-call durations. */
export interface HistogramCell {
  observe(value: number): void;
}

/**
 * One label set of a BatchedHistogram: observe() is a bucket search and three additions,
 * where prom-client's observe() validates and hashes the label set on every call.
 */
class BatchedHistogramCell implements HistogramCell {
  /** Observations per bucket since the last merge; the last slot is above the highest bound. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    readonly labels: Readonly<Record<string, string>>,
    /** prom-client's key for this label set (see BatchedHistogram.cell). */
    readonly key: string,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(value: number): void {
    // prom-client throws on these; a duration is always finite, so drop rather than throw.
    if (!Number.isFinite(value)) return;
    const bounds = this.bounds;
    let bucket = 0;
    while (bucket < bounds.length && value > (bounds[bucket] as number)) bucket++;
    (this.counts[bucket] as number)++;
    this.sum += value;
    this.count++;
  }
}

/** The key prom-client files a label set under (util.js hashObject: the sorted label names). */
function labelKey(labels: Readonly<Record<string, string>>): string {
  return Object.keys(labels)
    .sort()
    .map((name) => `${name}:${labels[name]},`)
    .join('');
}

/** The cell of a label set: made on first use, then the same one (cells are for fixed label sets). */
function cellOf<C>(cells: Map<string, C>, labels: Readonly<Record<string, string>>, make: (key: string) => C): C {
  const key = labelKey(labels);
  let cell = cells.get(key);
  if (cell === undefined) {
    cell = make(key);
    cells.set(key, cell);
  }
  return cell;
}

/** One label set of a BatchedCounter: inc() is one addition, where prom-client's validates and hashes the labels. */
class BatchedCounterCell implements CounterCell {
  pending = 0;

  constructor(readonly labels: Readonly<Record<string, string>>) {}

  inc(): void {
    this.pending++;
  }
}

/**
 * A prom-client Counter (same name, help, labels and exposition) for hot paths: counts go
 * to CounterCells and are added to the counter before every read (scrape or get()).
 * Cells are for fixed label sets, made once.
 */
class BatchedCounter<T extends string> extends Counter<T> {
  private readonly cells: Map<string, BatchedCounterCell>;

  constructor(config: CounterConfiguration<T>) {
    const cells = new Map<string, BatchedCounterCell>();
    super({
      ...config,
      // prom-client calls collect with the metric as `this`, before every read.
      collect(this: Counter<T>) {
        for (const cell of cells.values()) {
          if (cell.pending === 0) continue;
          const count = cell.pending;
          cell.pending = 0;
          this.inc(cell.labels as Record<T, string>, count);
        }
      },
    });
    this.cells = cells;
  }

  cell(labels: Readonly<Record<T, string>>): CounterCell {
    return cellOf(this.cells, labels, () => new BatchedCounterCell(labels));
  }
}

/** prom-client 15's per-label-set histogram state (lib/histogram.js createBaseValues). */
interface PromHistogramEntry {
  bucketValues: Record<number, number>;
  sum: number;
  count: number;
}

/**
 * A prom-client Histogram (same name, help, buckets, labels and exposition) for hot
 * paths: observations go to HistogramCells and are added to the histogram's own state
 * before every read (scrape or get()). Cells are for fixed label sets, made once.
 */
class BatchedHistogram<T extends string> extends Histogram<T> {
  private readonly cells: Map<string, BatchedHistogramCell>;

  constructor(config: HistogramConfiguration<T>) {
    const cells = new Map<string, BatchedHistogramCell>();
    super({
      ...config,
      // prom-client calls collect with the metric as `this`, before every read.
      collect(this: Histogram<T>) {
        mergeCells(this, cells.values());
      },
    });
    this.cells = cells;
  }

  cell(labels: Readonly<Record<T, string>>): HistogramCell {
    return cellOf(this.cells, labels, (key) => new BatchedHistogramCell(labels, key, upperBoundsOf(this)));
  }
}

function upperBoundsOf(histogram: Histogram): readonly number[] {
  return (histogram as unknown as { upperBounds: readonly number[] }).upperBounds;
}

/** Adds the cells' observations to the histogram's own state and clears them. */
function mergeCells<T extends string>(histogram: Histogram<T>, cells: Iterable<BatchedHistogramCell>): void {
  const bounds = upperBoundsOf(histogram);
  const state = histogram as unknown as { hashMap: Record<string, PromHistogramEntry | undefined> };
  for (const cell of cells) {
    if (cell.count === 0) continue;
    let entry = state.hashMap[cell.key];
    if (!entry) {
      histogram.zero(cell.labels as Record<T, string>);
      entry = state.hashMap[cell.key];
      if (!entry) throw new Error(`histogram cell ${cell.key}: prom-client's histogram internals changed; update mergeCells`);
    }
    for (let bucket = 0; bucket < bounds.length; bucket++) {
      const bound = bounds[bucket] as number;
      entry.bucketValues[bound] = (entry.bucketValues[bound] ?? 0) + (cell.counts[bucket] as number);
    }
    entry.sum += cell.sum;
    entry.count += cell.count;
    cell.counts.fill(0);
    cell.sum = 0;
    cell.count = 0;
  }
}

/** A counter cell that is prom-client's own inc() with its label set (no batching). */
class LabelledCounter<T extends string> extends Counter<T> {
  cell(labels: Readonly<Record<T, string>>): CounterCell {
    return { inc: () => this.inc(labels as Record<T, string>) };
  }
}

/** A histogram cell that is prom-client's own observe() with its label set (no batching). */
class LabelledHistogram<T extends string> extends Histogram<T> {
  cell(labels: Readonly<Record<T, string>>): HistogramCell {
    return { observe: (value: number) => this.observe(labels as Record<T, string>, value) };
  }
}

/** Every (method, result) src/chain/identity.ts counts: a blocked source or an anonymous call only fails. */
const AUTH_OUTCOMES = [
  ['mtls', 'success'],
  ['mtls', 'failure'],
  ['api_key', 'success'],
  ['api_key', 'failure'],
  ['none', 'failure'],
  ['blocked', 'failure'],
] as const;

/** Benchmark switch, read once at start-up: DEBVISOR_METRICS_BATCHING=off uses prom-client's public API per call. */
const BATCHING = process.env.DEBVISOR_METRICS_BATCHING !== 'off';
const HotCounter = BATCHING ? BatchedCounter : LabelledCounter;
const HotHistogram = BATCHING ? BatchedHistogram : LabelledHistogram;

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export class Metrics {
  readonly registry = new Registry();

  readonly rpcRequests = new HotCounter({
    name: 'rpc_requests_total',
    help: 'RPCs completed, by service, method and final gRPC status.',
    labelNames: ['service', 'method', 'status'] as const,
    registers: [this.registry],
  });

  readonly rpcDuration = new HotHistogram({
    name: 'rpc_request_duration_seconds',
    help: 'Time from request headers to final status.',
    labelNames: ['service', 'method'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  // The go-grpc-middleware names, so existing Grafana dashboards work unchanged.
  readonly grpcHandled = new HotCounter({
    name: 'grpc_server_handled_total',
    help: 'Total number of RPCs completed on the server, regardless of success or failure.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method', 'grpc_code'] as const,
    registers: [this.registry],
  });

  readonly grpcHandling = new HotHistogram({
    name: 'grpc_server_handling_seconds',
    help: 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly authAttempts = new HotCounter({
    name: 'auth_attempts_total',
    help: 'Authentication attempts, by method (mtls, api_key, none, blocked) and result (success, failure).',
    labelNames: ['method', 'result'] as const,
    registers: [this.registry],
  });

  readonly authzDenials = new Counter({
    name: 'authz_denials_total',
    help: 'Calls refused by RBAC, by principal (bounded, see principalLabel) and missing permission.',
    labelNames: ['principal', 'permission'] as const,
    registers: [this.registry],
  });

  readonly rateLimitViolations = new Counter({
    name: 'rate_limit_violations_total',
    help: 'Calls refused by a rate limit, by principal (bounded; "global" for the global limit).',
    labelNames: ['principal'] as const,
    registers: [this.registry],
  });

  readonly auditWriteFailures = new Counter({
    name: 'audit_write_failures_total',
    help: 'Audit records that could not be written.',
    registers: [this.registry],
  });

  readonly auditRecordsDropped = new Counter({
    name: 'audit_records_dropped_total',
    help: 'Audit records of unauthenticated calls not written (per-source limit or low space); each source gets a summary record.',
    registers: [this.registry],
  });

  readonly auditFreeBytes = new Gauge({
    name: 'audit_free_bytes',
    help: 'Free bytes on the audit log filesystem (for unprivileged writers).',
    registers: [this.registry],
  });

  readonly auditLowSpace = new Gauge({
    name: 'audit_low_space',
    help: '1 while the audit filesystem has less free space than audit.reserve_free_bytes.',
    registers: [this.registry],
  });

  readonly auditReopens = new Counter({
    name: 'audit_file_reopens_total',
    help: 'Times the audit file was renamed, removed or truncated by another program and reopened.',
    registers: [this.registry],
  });

  readonly buildInfo = new Gauge({
    name: 'debvisor_build_info',
    help: 'Always 1: the running daemon version and Node.js version, as labels.',
    labelNames: ['version', 'node_version'] as const,
    registers: [this.registry],
  });

  private readonly principals = new Set<string>();

  constructor(private readonly maxPrincipalLabels = 200) {
    // Event-loop lag sampled every 100 ms, not prom-client's 10 ms: the 10 ms timer alone
    // kept an idle daemon at ~1% of a core (11 ms of CPU per second; 2 ms with 100 ms).
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 100 });
    // prom-client's three totals are gauges with a counter's "_total" name, which
    // `promtool check metrics` refuses; nodejs_active_{handles,requests,resources}{type}
    // carry the same counts by type.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(name);
    // The series alerts read exist from the start at 0, so increase() sees a first burst.
    for (const [method, result] of AUTH_OUTCOMES) this.authAttempts.inc({ method, result }, 0);
    this.rateLimitViolations.inc({ principal: 'global' }, 0);
    this.buildInfo.set({ version: VERSION, node_version: process.versions.node }, 1);
  }

  /** Keeps principal label cardinality bounded: principals beyond the cap are counted as "other". */
  principalLabel(principal: string): string {
    if (this.principals.has(principal)) return principal;
    if (this.principals.size >= this.maxPrincipalLabels) return 'other';
    this.principals.add(principal);
    return principal;
  }
}
