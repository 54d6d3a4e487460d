// WatchEvents fan-out: 500 concurrent streams on one daemon.
//   npm run bench:events
// Env: BENCH_STREAMS (default 500), BENCH_CONNECTIONS (default 10: the streams are spread over
//      this many client channels), BENCH_EVENTS (single events published one at a time, each
//      once every stream has the previous one; default 200), BENCH_BURSTS (bursts of 100 events
//      in one call, coalesced by the journal; default 5).
// Measures the daemon's RSS (from /proc/<pid>/status) before the streams open and at its
// highest while they are open and events flow, and the fan-out latency of every (event,
// stream) pair: receipt time on the client minus the event's `time`, which the journal stamps
// when the source publishes (same machine, same clock). The client shares the 2 cores with
// the daemon, so its own delays are part of the figure.
// Writes bench/results-events.md; any "## History" section already in it is kept.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { Metadata, type Client, type ClientReadableStream } from '@grpc/grpc-js';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { timestampMs } from '@bufbuild/protobuf/wkt';
import { TestingService } from '../src/gen/debvisor/testing/v1/testing_pb.js';
import { EventKind, EventSchema, WatchEventsRequestSchema, type Event } from '../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../src/gen/debvisor/v1/options_pb.js';
import { VmState } from '../src/gen/debvisor/v1/vm_pb.js';
import { DIST_BUILT_ENV } from '../test/support/built.js';
import { REPO_ROOT, clientFor, rawClientFor } from '../test/support/daemon.js';
import { startTestingDaemon } from '../test/support/testing.js';

const STREAMS = Number(process.env.BENCH_STREAMS ?? 500);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 10);
const EVENTS = Number(process.env.BENCH_EVENTS ?? 200);
const BURSTS = Number(process.env.BENCH_BURSTS ?? 5);
const BURST_SIZE = 100;
const TARGET_RSS_MB = 100;
const TARGET_P99_MS = 100;
const RESULTS = join(REPO_ROOT, 'bench', 'results-events.md');

const WATCH = '/debvisor.v1.EventService/WatchEvents';
const WATCH_REQUEST = toBinary(WatchEventsRequestSchema, create(WatchEventsRequestSchema, { kinds: [EventKind.VM_STATE_CHANGED] }));
// The 500 streams live in this one process: each event arrives 500 times as the same bytes, and
// decoding it once (not 500 times) keeps the client's share of the 2 cores out of the daemon's figure.
const decoded = new Map<string, Event>();
function decode(bytes: Buffer): Event {
  const key = bytes.toString('latin1');
  let event = decoded.get(key);
  if (!event) {
    if (decoded.size > 10_000) decoded.clear();
    decoded.set(key, (event = fromBinary(EventSchema, bytes)));
  }
  return event;
}

function rssBytes(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match?.[1] ?? 0) * 1024;
}

/** The daemon's V8 heap in use (prom-client's nodejs_heap_size_used_bytes): what it holds, apart from garbage not yet collected. */
async function heapUsedBytes(httpAddress: string): Promise<number> {
  const text = await (await fetch(`http://${httpAddress}/metrics`)).text();
  return Number(/^nodejs_heap_size_used_bytes (\S+)$/m.exec(text)?.[1] ?? Number.NaN);
}

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}

const mb = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

async function main(): Promise<void> {
  execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
  process.env[DIST_BUILT_ENV] = '1';
  const daemon = await startTestingDaemon({
    config: {
      log: { level: 'warn' },
      events: { max_streams_per_principal: STREAMS, max_streams: STREAMS * 2 },
      rate_limit: { per_role_per_minute: { admin: 1_000_000 }, default_per_minute: 1_000_000, global_per_minute: 10_000_000 },
    },
  });
  const clients: Client[] = [];
  const metadata = new Metadata();
  const testing = await clientFor(TestingService, daemon);
  const streams: ClientReadableStream<Event>[] = [];
  try {
    for (let i = 0; i < CONNECTIONS; i++) clients.push(await rawClientFor(daemon));
    // Warm the daemon's code paths once (a stream, an event) before the baseline.
    await testing.publishTestEvents({ events: [{ kind: EventKind.NODE_ONLINE, resource: { kind: ResourceKind.NODE, name: 'warm-up' } }] }, { timeoutMs: 15_000 });
    const before = rssBytes(daemon.pid);
    const heapBefore = await heapUsedBytes(daemon.httpAddress);

    const received = new Map<string, number>(); // event name → streams that got it
    const latencies: number[] = [];
    let waiting: { name: string; count: number; resolve: () => void } | undefined;
    const opened: Promise<void>[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const client = clients[i % CONNECTIONS];
      if (!client) throw new Error('no client');
      const stream = client.makeServerStreamRequest<Uint8Array, Event>(WATCH, (request) => Buffer.from(request), decode, WATCH_REQUEST, metadata);
      opened.push(new Promise((resolve, reject) => {
        stream.once('metadata', () => resolve());
        stream.once('error', reject);
      }));
      stream.on('error', () => undefined);
      stream.on('data', (event: Event) => {
        const now = Date.now();
        if (event.kind !== EventKind.VM_STATE_CHANGED || !event.time) return;
        latencies.push(now - timestampMs(event.time));
        const name = event.resource?.name ?? '';
        const count = (received.get(name) ?? 0) + 1;
        received.set(name, count);
        if (waiting && waiting.name === name && count >= waiting.count) waiting.resolve();
      });
      streams.push(stream);
    }
    await Promise.all(opened);
    const idle = rssBytes(daemon.pid);
    const heapIdle = await heapUsedBytes(daemon.httpAddress);
    let peak = idle;
    const sample = setInterval(() => (peak = Math.max(peak, rssBytes(daemon.pid))), 100);
    const deliveredToAll = (name: string, count: number) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${name}: only ${received.get(name) ?? 0} of ${count} deliveries within 60 s`)), 60_000);
        waiting = {
          name,
          count,
          resolve: () => {
            clearTimeout(timer);
            resolve();
          },
        };
        if ((received.get(name) ?? 0) >= count) waiting.resolve();
      });
    const vm = (name: string) => ({ kind: EventKind.VM_STATE_CHANGED, resource: { kind: ResourceKind.VM, node: 'bench', name }, payload: { case: 'vmState' as const, value: { state: VmState.RUNNING, previousState: VmState.SHUT_OFF } } });

    const started = Date.now();
    for (let i = 0; i < EVENTS; i++) {
      const name = `single-${i}`;
      const done = deliveredToAll(name, STREAMS);
      await testing.publishTestEvents({ events: [vm(name)] }, { timeoutMs: 15_000 });
      await done;
    }
    const singles = [...latencies].sort((a, b) => a - b);
    const singlesPeak = peak;
    latencies.length = 0;
    for (let b = 0; b < BURSTS; b++) {
      const names = Array.from({ length: BURST_SIZE }, (_, i) => `burst-${b}-${i}`);
      const done = deliveredToAll(names[names.length - 1] ?? '', STREAMS);
      await testing.publishTestEvents({ events: names.map(vm) }, { timeoutMs: 15_000 });
      await done;
    }
    const bursts = [...latencies].sort((a, b) => a - b);
    const elapsedS = (Date.now() - started) / 1000;
    clearInterval(sample);
    peak = Math.max(peak, rssBytes(daemon.pid));
    const increase = peak - before;
    const heapAfter = await heapUsedBytes(daemon.httpAddress);

    const row = (what: string, sorted: readonly number[]) =>
      `| ${what} | ${sorted.length} | ${percentile(sorted, 50)} | ${percentile(sorted, 99)} | ${sorted[sorted.length - 1] ?? '-'} | ${percentile(sorted, 99) <= TARGET_P99_MS ? 'yes' : '**no**'} |`;
    const report = [
      '# Event fan-out benchmark',
      '',
      `${new Date().toISOString().slice(0, 10)}, node ${process.version}, ${cpus().length} cores (${cpus()[0]?.model.trim() ?? '?'}), shared by the daemon and the client.`,
      `${STREAMS} concurrent WatchEvents streams (kinds: VM_STATE_CHANGED) over ${CONNECTIONS} mTLS connections to one daemon (embedded store, default \`events\` settings: batch_ms 50);`,
      `${EVENTS} single events published one at a time (each once every stream had the previous one), then ${BURSTS} bursts of ${BURST_SIZE} events in one call; ${elapsedS.toFixed(1)} s in all.`,
      'Latency: receipt on the client minus the event time the journal stamps at publication (so it includes the store write and the watch); RSS from /proc/<pid>/status, sampled every 100 ms.',
      'Reproduce: `npm run bench:events`.',
      '',
      `Targets: daemon RSS increase ≤ ${TARGET_RSS_MB} MB with the streams open; fan-out latency p99 ≤ ${TARGET_P99_MS} ms.`,
      '',
      '| daemon RSS before streams | streams open, idle | peak during single events | peak during bursts | increase (highest peak − before) | target met |',
      '|---:|---:|---:|---:|---:|---|',
      `| ${mb(before)} MiB | ${mb(idle)} MiB | ${mb(singlesPeak)} MiB | ${mb(peak)} MiB | ${mb(increase)} MiB | ${increase <= TARGET_RSS_MB * 2 ** 20 ? 'yes' : '**no**'} |`,
      '',
      `V8 heap in use: ${mb(heapBefore)} MiB before the streams, ${mb(heapIdle)} MiB with them open and idle, ${mb(heapAfter)} MiB after all events (garbage not yet collected included).`,
      '',
      '| events | deliveries (event × stream) | p50 ms | p99 ms | max ms | p99 target met |',
      '|---|---:|---:|---:|---:|---|',
      row('single events', singles),
      row(`bursts of ${BURST_SIZE}`, bursts),
      '',
    ].join('\n');
    const history = existsSync(RESULTS) ? /\n## History\n[\s\S]*$/.exec(readFileSync(RESULTS, 'utf8'))?.[0] ?? '' : '';
    writeFileSync(RESULTS, `${report}${history}`);
    process.stdout.write(`${report}\n`);
  } finally {
    for (const stream of streams) stream.cancel();
    for (const client of clients) client.close();
    testing.close();
    await daemon.cleanup();
  }
}

await main();
