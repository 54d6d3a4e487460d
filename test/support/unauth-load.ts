// A legitimate mTLS client's latency while test/e2e/unauth-loadgen.ts (a separate process)
// puts unauthenticated load on the daemon: shared by test/e2e/security-unauth-load.test.ts
// and bench/unauth-load.ts. Everything is bounded: loopback only, a fixed number of calls,
// and the load generator stops by itself after `maxLoadMs`.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Client } from '@grpc/grpc-js';
import { REPO_ROOT, rawClientFor, rawUnary, type RunningDaemon } from './daemon.js';

export type LoadKind = 'reflection' | 'idle' | 'halfopen';

export interface LoadShape {
  readonly sources: readonly string[];
  readonly connectionsPerSource: number;
  readonly concurrency: number;
}

/** The three loads of issue 17, sized to stay within the default caps per source. */
export const LOADS: Record<LoadKind, LoadShape> = {
  reflection: { sources: ['127.0.1.1', '127.0.1.2', '127.0.1.3', '127.0.1.4'], connectionsPerSource: 1, concurrency: 16 },
  // 8 sources × 140: the default cap (128) holds, the rest are refused at accept.
  idle: { sources: Array.from({ length: 8 }, (_, i) => `127.0.2.${i + 1}`), connectionsPerSource: 140, concurrency: 1 },
  halfopen: { sources: Array.from({ length: 8 }, (_, i) => `127.0.3.${i + 1}`), connectionsPerSource: 140, concurrency: 1 },
};

export interface Latencies {
  readonly count: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
  readonly failures: number;
  /** Failed calls by status code. */
  readonly failedCodes: Record<string, number>;
}

export interface LoadedRun {
  readonly kind: LoadKind;
  readonly latencies: Latencies;
  /** The load generator's own figures (calls and codes, connections opened and closed, ...). */
  readonly load: Record<string, unknown>;
}

const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? Number.NaN;
}

/** `count` sequential WhoAmI calls over one mTLS connection; their latencies in ms. */
export async function legitLatencies(client: Client, count: number): Promise<Latencies> {
  const samples: number[] = [];
  let failures = 0;
  const failedCodes: Record<string, number> = {};
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    const { error } = await rawUnary(client, WHOAMI, Buffer.alloc(0), {}, 10_000);
    samples.push(performance.now() - started);
    if (error) {
      failures++;
      failedCodes[String(error.code)] = (failedCodes[String(error.code)] ?? 0) + 1;
    }
  }
  samples.sort((a, b) => a - b);
  return { count, p50: quantile(samples, 0.5), p99: quantile(samples, 0.99), max: samples[samples.length - 1] ?? Number.NaN, failures, failedCodes };
}

/**
 * The daemon config for these measurements: the defaults, but the admin's own rate limit
 * out of the way (the client makes ~1,000 calls a minute; 1000/min is the default).
 */
export const LEGIT_CONFIG = { rate_limit: { per_role_per_minute: { admin: 1_000_000 } } };

/** An admin mTLS client with its connection open and warmed up. */
export async function legitClient(daemon: RunningDaemon): Promise<Client> {
  const client = await rawClientFor(daemon);
  await legitLatencies(client, 20);
  return client;
}

/** Starts the load generator, waits until its load is in place, runs `measure`, stops it. */
export async function underLoad<T>(daemon: RunningDaemon, kind: LoadKind, measure: () => Promise<T>, maxLoadMs = 120_000): Promise<{ result: T; load: Record<string, unknown> }> {
  const shape = LOADS[kind];
  const options = {
    kind,
    host: '127.0.0.1',
    port: daemon.grpcPort,
    caFile: daemon.pki.caCert,
    sources: shape.sources,
    connectionsPerSource: shape.connectionsPerSource,
    concurrency: shape.concurrency,
    durationMs: maxLoadMs,
  };
  const child = spawn(process.execPath, [join(REPO_ROOT, 'test/e2e/unauth-loadgen.ts'), JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const received: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  lines.on('line', (line) => {
    try {
      received.push(JSON.parse(line) as Record<string, unknown>);
    } catch {
      return;
    }
    for (const wake of waiters.splice(0)) wake();
  });
  const exited = once(child, 'exit');
  const next = async (key: string): Promise<Record<string, unknown>> => {
    for (;;) {
      const found = received.find((record) => record[key] === true);
      if (found) return found;
      if (child.exitCode !== null) throw new Error(`load generator exited (${child.exitCode}) before "${key}"`);
      await Promise.race([new Promise<void>((resolve) => waiters.push(resolve)), exited]);
    }
  };
  try {
    await next('ready');
    const result = await measure();
    child.stdin.end();
    const load = await next('done');
    return { result, load };
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
}
