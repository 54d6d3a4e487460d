// Rough throughput of the audit log on the local disk: `npm run bench:audit -- [dir]`.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AuditLog } from '../src/audit/log.js';
import { verifyAuditFiles } from '../src/audit/verify.js';
import { event, keyOf } from '../test/audit/helpers.js';

const base = process.argv[2] ?? tmpdir();

async function withLog<T>(fn: (log: AuditLog, dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(base, 'dv-audit-bench-'));
  const log = await AuditLog.open({ path: join(dir, 'rpc-audit.log'), hmacKeyFile: join(dir, 'audit-hmac.key') });
  try {
    return await fn(log, dir);
  } finally {
    await log.close().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
}

function rate(n: number, ms: number): string {
  return `${Math.round((n / ms) * 1000).toLocaleString('en')} events/s`;
}

await withLog(async (log, dir) => {
  const n = 200_000;
  const events = Array.from({ length: n }, (_, i) => event(i));
  let callTime = 0;
  const start = performance.now();
  // Bursts of 500 calls, letting the event loop (and the writer) run in between, as RPCs would.
  for (let i = 0; i < n; i += 500) {
    const t = performance.now();
    for (let k = i; k < i + 500; k++) log.write(events[k]!);
    callTime += performance.now() - t;
    await new Promise((resolve) => setImmediate(resolve));
  }
  await log.close();
  const done = performance.now();
  const { fsyncs, lostEvents, entries } = log.stats;
  console.log(`write():            ${rate(entries, done - start)} to disk; call cost ${((callTime / n) * 1000).toFixed(2)} µs/event; ${fsyncs} fsyncs; lost ${lostEvents}`);
  const t = performance.now();
  const result = verifyAuditFiles([join(dir, 'rpc-audit.log')], keyOf(dir));
  console.log(`verify:             ${rate(result.ok ? result.entries : 0, performance.now() - t)} (${result.ok ? 'ok' : 'FAILED'})`);
});

for (const inFlight of [1, 50, 200]) {
  await withLog(async (log) => {
    const deadline = performance.now() + 2000;
    let count = 0;
    const latencies: number[] = [];
    const start = performance.now();
    await Promise.all(
      Array.from({ length: inFlight }, async (_, w) => {
        while (performance.now() < deadline) {
          const t = performance.now();
          await log.writeDurable(event(w * 1_000_000 + count++));
          latencies.push(performance.now() - t);
        }
      }),
    );
    const elapsed = performance.now() - start;
    latencies.sort((a, b) => a - b);
    const p = (q: number): string => (latencies[Math.floor(q * (latencies.length - 1))] ?? 0).toFixed(2);
    console.log(
      `writeDurable x${String(inFlight).padEnd(3)}:   ${rate(count, elapsed)}; ${log.stats.fsyncs} fsyncs (${(count / log.stats.fsyncs).toFixed(1)} events/fsync); latency p50 ${p(0.5)} ms p99 ${p(0.99)} ms`,
    );
  });
}
