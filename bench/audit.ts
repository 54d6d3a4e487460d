// Rough throughput of the audit log on the local disk: `npm run bench:audit -- [dir]`.
// First the record writer alone, reference (event.ts) against fast path (event-fast.ts),
// in alternating rounds so both see the same machine; then the log as configured
// (DEBVISOR_AUDIT_SERIALIZER=reference|fast picks its writer, read once at start-up).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventBuffer } from '../src/audit/chain.js';
import { appendEvent, type AuditEventInput } from '../src/audit/event.js';
import { appendEventFast } from '../src/audit/event-fast.js';
import { AuditLog } from '../src/audit/log.js';
import { scrubSecretsInJson } from '../src/audit/redact.js';
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

/** A read call's record as the chain writes it: frozen principal (src/audit/principal.ts), hex trace id, no request. */
function readRecord(i: number): AuditEventInput {
  const principal = Object.freeze({ id: 'admin', kind: 'certificate' as const, roles: Object.freeze(['admin']), cert_fingerprint: 'ab'.repeat(32) });
  return { type: 'CALL', trace_id: i.toString(16).padStart(32, '0'), principal, source: '127.0.0.1:51514', method: '/debvisor.testing.v1.TestingService/Echo', decision: 'allow', code: 'OK', duration_ms: (i % 5000) / 1000 };
}

/** A mutation's record: the same principal, with its request and object. */
function mutationRecord(i: number): AuditEventInput {
  return { ...readRecord(i), method: '/debvisor.v1.VmService/StartVm', request: { vmName: `web-${i % 100}` }, object: `vm/web-${i % 100}` };
}

type Append = typeof appendEvent;
const writers: [string, Append][] = [
  ['reference', appendEvent],
  ['fast', appendEventFast],
];

/** ns per record of `append` over `records`, batches of 500 into one reused buffer (as the log's pending batch). */
function serializerCost(append: Append, records: readonly AuditEventInput[]): number {
  const buffer = new EventBuffer();
  const time = (): string => '2026-12-07T12:00:00.000Z';
  const start = performance.now();
  for (let i = 0; i < records.length; i++) {
    append(buffer, records[i]!, time, scrubSecretsInJson);
    if (buffer.count === 500) buffer.clear();
  }
  return ((performance.now() - start) * 1e6) / records.length;
}

const ROUNDS = 7;
for (const [kind, make] of [['read record', readRecord], ['mutation record', mutationRecord]] as const) {
  const records = Array.from({ length: 200_000 }, (_, i) => make(i));
  const costs = new Map<string, number[]>(writers.map(([name]) => [name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    // Mirrored order from round to round; the first round of each is warm-up.
    for (const [name, append] of round % 2 === 0 ? writers : [...writers].reverse()) {
      const cost = serializerCost(append, records);
      if (round > 0) costs.get(name)!.push(cost);
    }
  }
  const summary = [...costs].map(([name, values]) => {
    values.sort((a, b) => a - b);
    return `${name} median ${values[values.length >> 1]!.toFixed(0)} ns (${values[0]!.toFixed(0)}–${values.at(-1)!.toFixed(0)})`;
  });
  console.log(`serializer, ${kind.padEnd(15)}: ${summary.join('; ')}`);
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
