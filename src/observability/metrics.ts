// Every Prometheus metric the daemon exports, in one registry.
import { Counter, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

export class Metrics {
  readonly registry = new Registry();

  readonly rpcRequests = new Counter({
    name: 'rpc_requests_total',
    help: 'RPCs completed, by service, method and final gRPC status.',
    labelNames: ['service', 'method', 'status'] as const,
    registers: [this.registry],
    collect: () => this.flushPending(),
  });

  readonly rpcDuration = new Histogram({
    name: 'rpc_request_duration_seconds',
    help: 'Time from request headers to final status.',
    labelNames: ['service', 'method'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  // The go-grpc-middleware names, so existing Grafana dashboards work unchanged.
  readonly grpcHandled = new Counter({
    name: 'grpc_server_handled_total',
    help: 'Total number of RPCs completed on the server, regardless of success or failure.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method', 'grpc_code'] as const,
    registers: [this.registry],
    collect: () => this.flushPending(),
  });

  readonly grpcHandling = new Histogram({
    name: 'grpc_server_handling_seconds',
    help: 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
    labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const,
    buckets: LATENCY_BUCKETS,
    registers: [this.registry],
  });

  readonly authAttempts = new Counter({
    name: 'auth_attempts_total',
    help: 'Authentication attempts, by method (mtls, api_key, none) and result (success, failure).',
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

  private readonly principals = new Set<string>();
  private readonly flushers: Array<() => void> = [];

  /**
   * For counts kept outside prom-client on the hot path (the chain counts calls per method
   * and code in plain numbers): `flush` adds them to rpc_requests_total and
   * grpc_server_handled_total, and runs before every read of either (scrape or get()).
   */
  onCollect(flush: () => void): void {
    this.flushers.push(flush);
  }

  private flushPending(): void {
    for (const flush of this.flushers) flush();
  }

  constructor(private readonly maxPrincipalLabels = 200) {
    collectDefaultMetrics({ register: this.registry });
  }

  /** Keeps principal label cardinality bounded: principals beyond the cap are counted as "other". */
  principalLabel(principal: string): string {
    if (this.principals.has(principal)) return principal;
    if (this.principals.size >= this.maxPrincipalLabels) return 'other';
    this.principals.add(principal);
    return principal;
  }
}
