// Every Prometheus metric the daemon exports, in one registry.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { VERSION } from '../version.js';

/** A counter of one fixed label set, for the chain's per-call counts. */
export interface CounterCell {
  inc(): void;
}

/** A histogram of one fixed label set, for the chain's per-call durations. */
export interface HistogramCell {
  observe(value: number): void;
}

/** A Counter whose label sets the chain binds once per method and code (cell). */
class CellCounter<T extends string> extends Counter<T> {
  cell(labels: Readonly<Record<T, string>>): CounterCell {
    return { inc: () => this.inc(labels as Record<T, string>) };
  }
}

/** A Histogram whose label sets the chain binds once per method (cell). */
class CellHistogram<T extends string> extends Histogram<T> {
  cell(labels: Readonly<Record<T, string>>): HistogramCell {
    return {
      observe: (value) => {
        // prom-client throws on a value that is not finite; a duration always is, so drop rather than throw.
        if (Number.isFinite(value)) this.observe(labels as Record<T, string>, value);
      },
    };
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

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export class Metrics {
  readonly registry = new Registry();

  readonly rpcRequests = new CellCounter({
    name: 'rpc_requests_total',
    help: 'RPCs completed, by service, method and final gRPC status.',
    labelNames: ['service', 'method', 'status'] as const,
    registers: [this.registry],
  });

  readonly rpcDuration = new CellHistogram({
    name: 'rpc_request_duration_seconds',
    help: 'Time from request headers to final status.',
    labelNames: ['service', 'method'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  // The go-grpc-middleware names, so existing Grafana dashboards work unchanged.
  readonly grpcHandled = new CellCounter({
    name: 'grpc_server_handled_total',
    help: 'Total number of RPCs completed on the server, regardless of success or failure.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method', 'grpc_code'] as const,
    registers: [this.registry],
  });

  readonly grpcHandling = new CellHistogram({
    name: 'grpc_server_handling_seconds',
    help: 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly authAttempts = new CellCounter({
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
