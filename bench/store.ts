// Store throughput and latency, both backends in one run:
//   npm run bench:store            (ops per phase: BENCH_OPS, default 5000; in flight: BENCH_CONCURRENCY, default 32)
// Writes bench/results-store.md. Figures are for comparing the backends with each
// other on one machine in one run, not absolute targets.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openEmbeddedStore } from '../src/store/embedded/store.js';
import { openEtcdStore } from '../src/store/etcd/store.js';
import type { Store } from '../src/store/store.js';
import { startEtcd } from '../test/support/etcd.js';

const OPS = Number(process.env.BENCH_OPS ?? 5000);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const value = new Uint8Array(256).fill(7);

interface Result {
  backend: string;
  op: string;
  opsPerSecond: number;
  p50ms: number;
  p99ms: number;
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? NaN;
}

async function measure(backend: string, op: string, run: (i: number) => Promise<unknown>): Promise<Result> {
  const latencies: number[] = [];
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < OPS) {
        const i = next++;
        const t0 = performance.now();
        await run(i);
        latencies.push(performance.now() - t0);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return { backend, op, opsPerSecond: OPS / seconds, p50ms: percentile(latencies, 0.5), p99ms: percentile(latencies, 0.99) };
}

async function suite(backend: string, store: Store): Promise<Result[]> {
  const key = (i: number) => `/debvisor/bench/${String(i % 1000).padStart(4, '0')}`;
  const results: Result[] = [];
  results.push(await measure(backend, 'put', (i) => store.put(key(i), value)));
  results.push(await measure(backend, 'get', (i) => store.get(key(i))));
  results.push(
    await measure(backend, 'txn (CAS put)', async (i) => {
      const kv = await store.get(key(i));
      return store.txn({ compare: [{ key: key(i), modRevision: kv?.modRevision ?? 0 }], success: [{ type: 'put', key: key(i), value }] });
    }),
  );
  return results;
}

const dir = mkdtempSync(join(tmpdir(), 'debvisor-bench-'));
const results: Result[] = [];
try {
  const embedded = await openEmbeddedStore({ dir });
  results.push(...(await suite('embedded', embedded)));
  await embedded.close();
  const etcd = await startEtcd();
  try {
    const client = await openEtcdStore({ endpoints: etcd.endpoints });
    results.push(...(await suite('etcd', client)));
    await client.close();
  } finally {
    await etcd.stop();
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const lines = [
  `# Store benchmark`,
  '',
  `${OPS} operations per row, ${CONCURRENCY} in flight, 256-byte values over 1,000 keys; node ${process.version}, ${new Date().toISOString().slice(0, 10)}.`,
  'The txn row is a get plus a compare-and-swap put (two round trips). Reproduce: `npm run bench:store`.',
  '',
  '| backend | operation | ops/s | p50 ms | p99 ms |',
  '|---|---|---:|---:|---:|',
  ...results.map((r) => `| ${r.backend} | ${r.op} | ${Math.round(r.opsPerSecond)} | ${r.p50ms.toFixed(2)} | ${r.p99ms.toFixed(2)} |`),
];
writeFileSync(new URL('results-store.md', import.meta.url), `${lines.join('\n')}\n`);
console.log(lines.join('\n'));
