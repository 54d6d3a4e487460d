// What the live VM inventory costs and how current it is, with 1,000 domains on the libvirt test driver.
//   npm run bench:inventory
// Env: BENCH_DOMAINS (default 1000), BENCH_CALLS (ListVms calls measured, default 2000),
//      BENCH_IN_FLIGHT (default 10), BENCH_SAMPLES (start-to-visible samples, default 20),
//      BENCH_SECONDS (the separate client's measured window, default 8).
//
// Measured:
//   - ListVms (full daemon, `node dist/main.js`): host processes per call, from the daemon's exec
//     trace (DEBVISOR_EXEC_TRACE: one line per spawn), and latency at BENCH_IN_FLIGHT calls in
//     flight, for the default page (100 VMs) and a full page (1,000 VMs); GetVm the same way;
//   - the daemon's initial load (VmService SERVING) and the processes it took;
//   - a resync (in process, VmLiveInventory over the same libvirtd, onSpawn counting): with nothing
//     changed, and with 10 domains changed behind its back;
//   - the heartbeat's store publication (VmInventory.publish into an embedded store): processes;
//   - from a plain `virsh start` (a separate process, as an operator would run it) to the
//     VM_STATE_CHANGED event of an in-process inventory, and to ListVms on the daemon showing it.
// Writes bench/results-inventory.md.
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pino from 'pino';
import { Registry } from 'prom-client';
import { Libvirt } from '../src/backends/libvirt/virsh.js';
import { EventKind } from '../src/gen/debvisor/v1/event_pb.js';
import { create, toBinary } from '@bufbuild/protobuf';
import { ListVmsRequestSchema, ListVmsResponseSchema, VmService, VmState } from '../src/gen/debvisor/v1/vm_pb.js';
import { vmHandlers } from '../src/services/vm.js';
import type { CallContext } from '../src/rpc/context.js';
import { VmInventory } from '../src/migration/inventory.js';
import { createRepositories } from '../src/store/repositories.js';
import { VmLiveInventory, DEFAULT_INVENTORY_SETTINGS } from '../src/vms/inventory.js';
import { DIST_BUILT_ENV } from '../test/support/built.js';
import { REPO_ROOT, clientFor, startDaemon } from '../test/support/daemon.js';
import { grpcHealth } from '../test/support/health.js';
import { startLibvirt, VIRSH } from '../test/support/libvirt.js';
import { embeddedHarness } from '../test/support/store-harness.js';
import type { LoadResult } from './loadgen.js';
import { loadInProcess } from './spawn.js';

const DOMAINS = Number(process.env.BENCH_DOMAINS ?? 1000);
const CALLS = Number(process.env.BENCH_CALLS ?? 2000);
const IN_FLIGHT = Number(process.env.BENCH_IN_FLIGHT ?? 10);
const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 20);
const SEPARATE_CLIENT_SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const RESULTS = new URL('results-inventory.md', import.meta.url);
const run = promisify(execFile);
const log = pino({ level: 'silent' });

const name = (i: number) => `bench-${String(i).padStart(4, '0')}`;
const percentile = (sorted: readonly number[], p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? NaN;
const ms = (v: number) => v.toFixed(2);

async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

console.error('building dist/ …');
execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
process.env[DIST_BUILT_ENV] = '1';

const lv = await startLibvirt();
const work = mkdtempSync(join(tmpdir(), 'debvisor-bench-inventory-'));
const virsh = (...args: string[]) => run(VIRSH, ['-q', '-c', lv.uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' }, maxBuffer: 64 * 1024 * 1024 });
try {
  // 1. 1,000 domains, defined by a few virsh processes (many `define` commands each).
  const fixture = readFileSync(join(REPO_ROOT, 'test', 'backends', 'fixtures', 'libvirt', 'test-domain.xml'), 'utf8');
  const files: string[] = [];
  for (let i = 0; i < DOMAINS; i++) {
    const file = join(work, `${name(i)}.xml`);
    writeFileSync(file, fixture.replace('<name>vm1</name>', `<name>${name(i)}</name>`).replace('555555555555', String(i).padStart(12, '0')));
    files.push(file);
  }
  let started = performance.now();
  for (let i = 0; i < files.length; i += 250) await virsh(files.slice(i, i + 250).map((f) => `define ${f}`).join('; '));
  const defineMs = performance.now() - started;
  console.error(`defined ${DOMAINS} domains in ${ms(defineMs)} ms`);

  // 2. The daemon, every spawn traced.
  const traceFile = join(work, 'exec-trace.jsonl');
  const spawns = () => {
    try {
      return readFileSync(traceFile, 'utf8').split('\n').filter((l) => l.includes('"backend":"libvirt"')).length;
    } catch {
      return 0;
    }
  };
  started = performance.now();
  const daemon = await startDaemon({
    env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri, DEBVISOR_EXEC_TRACE: traceFile },
    config: {
      rate_limit: { per_role_per_minute: { admin: 100_000_000 }, default_per_minute: 100_000_000, global_per_minute: 100_000_000 },
      nodes: { self_register: true, heartbeat_interval_seconds: 1 },
    },
  });
  await until('VmService SERVING', async () => (await grpcHealth(daemon, VmService.typeName)) === 'SERVING');
  const loadMs = performance.now() - started;
  const loadProcesses = spawns();
  const vms = await clientFor(VmService, daemon);

  // 3. Heartbeats (every 1 s here) with nothing changed: processes over 10 heartbeats. The first
  //    of them writes the 1,000 store records; over before the latency is measured.
  const before = spawns();
  await new Promise((resolve) => setTimeout(resolve, 10_000));
  const heartbeatWindowProcesses = spawns() - before;

  // 4. ListVms / GetVm: processes per call and latency at IN_FLIGHT calls in flight.
  async function latency(call: () => Promise<unknown>): Promise<{ p50: number; p99: number; max: number; perSecond: number; processes: number; sequentialMs: number }> {
    for (let i = 0; i < 200; i++) await call();
    // One call at a time first: the cost of a call without queueing behind the others.
    const s0 = performance.now();
    for (let i = 0; i < 200; i++) await call();
    const sequentialMs = (performance.now() - s0) / 200;
    const before = spawns();
    const times: number[] = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next++ < CALLS) {
          const s = performance.now();
          await call();
          times.push(performance.now() - s);
        }
      }),
    );
    const elapsed = performance.now() - t0;
    times.sort((a, b) => a - b);
    return { p50: percentile(times, 50), p99: percentile(times, 99), max: times.at(-1) ?? NaN, perSecond: (CALLS / elapsed) * 1000, processes: (spawns() - before) / CALLS, sequentialMs };
  }
  const T = { timeoutMs: 30_000 };
  const loadDuringLatency = loadavg()[0] ?? NaN;
  const firstPage = await vms.listVms({}, T);
  if (firstPage.vms.length !== Math.min(100, DOMAINS)) throw new Error(`ListVms returned ${firstPage.vms.length} VMs`);
  const listDefault = await latency(() => vms.listVms({}, T));
  const listFull = await latency(() => vms.listVms({ pageSize: 1000 }, T));
  const getOne = await latency(() => vms.getVm({ vmName: name(DOMAINS - 1) }, T));
  // The same calls from a client in its own process (bench/loadgen.ts, raw HTTP/2, which does
  // not decode the answers): the grpc-js client above shares this process's core with its own
  // decoding of 100 VMs per answer, and its tail is partly its own.
  async function separateClient(path: string, request: Uint8Array): Promise<LoadResult & { processes: number }> {
    const before = spawns();
    const result = await loadInProcess({
      host: '127.0.0.1',
      port: daemon.grpcPort,
      path,
      requestHex: Buffer.from(request).toString('hex'),
      caFile: daemon.pki.caCert,
      certFile: daemon.pki.adminCert,
      keyFile: daemon.pki.adminKey,
      connections: 1,
      concurrency: IN_FLIGHT,
      warmupMs: 2_000,
      durationMs: SEPARATE_CLIENT_SECONDS * 1000,
      serverPid: daemon.pid,
    });
    if (result.errors > 0) throw new Error(`${path}: ${result.errors} failed calls: ${JSON.stringify(result.errorKinds)}`);
    return { ...result, processes: (spawns() - before) / result.totalCalls };
  }
  const rawListDefault = await separateClient(`/${VmService.typeName}/ListVms`, toBinary(ListVmsRequestSchema, create(ListVmsRequestSchema, {})));
  const rawListFull = await separateClient(`/${VmService.typeName}/ListVms`, toBinary(ListVmsRequestSchema, create(ListVmsRequestSchema, { pageSize: 1000 })));
  console.error('ListVms/GetVm measured');

  // 5. In process: resync and publication costs, and the start-to-event latency.
  let spawned = 0;
  const libvirt = new Libvirt({ uri: lv.uri, registry: new Registry(), onSpawn: () => spawned++ });
  const stateEvents = new Map<string, number>();
  const inventory = new VmLiveInventory({
    libvirt,
    node: () => 'bench',
    log,
    registry: new Registry(),
    settings: () => DEFAULT_INVENTORY_SETTINGS,
    events: {
      publish: (e) => {
        if (e.kind === EventKind.VM_STATE_CHANGED && e.resource?.name) stateEvents.set(e.resource.name, performance.now());
      },
    },
  });
  started = performance.now();
  await inventory.resync();
  const fullResync = { ms: performance.now() - started, processes: spawned };
  spawned = 0;
  started = performance.now();
  await inventory.resync();
  const quietResync = { ms: performance.now() - started, processes: spawned };
  // 10 domains started behind its back (it is not subscribed yet): one virsh process.
  await virsh(Array.from({ length: 10 }, (_, i) => `start ${name(i * 7)}`).join('; '));
  spawned = 0;
  started = performance.now();
  await inventory.resync();
  const changedResync = { ms: performance.now() - started, processes: spawned };
  await virsh(Array.from({ length: 10 }, (_, i) => `destroy ${name(i * 7)}`).join('; '));
  await inventory.resync();

  // The handler alone (no gRPC, no chain): ListVms over this inventory, response encoded.
  const handlers = vmHandlers({ libvirt, inventory, node: () => 'bench', operations: undefined as never, quotas: undefined as never, snapshotOwners: undefined as never, provisioning: {} as never });
  const ctx = { principal: { id: 'bench', kind: 'certificate' } } as unknown as CallContext;
  async function handlerMs(pageSize: number): Promise<number> {
    const request = create(ListVmsRequestSchema, { pageSize });
    const once = async () => toBinary(ListVmsResponseSchema, create(ListVmsResponseSchema, await handlers.listVms(request, ctx)));
    for (let i = 0; i < 200; i++) await once();
    const t0 = performance.now();
    for (let i = 0; i < 1000; i++) await once();
    return (performance.now() - t0) / 1000;
  }
  const handlerDefault = await handlerMs(0);
  const handlerFull = await handlerMs(1000);

  const harness = await embeddedHarness();
  const store = await harness.open();
  const publication = new VmInventory(createRepositories(store).vmInventory);
  spawned = 0;
  started = performance.now();
  await publication.publish('bench', inventory);
  const firstPublish = { ms: performance.now() - started, processes: spawned };
  spawned = 0;
  started = performance.now();
  await publication.publish('bench', inventory);
  const quietPublish = { ms: performance.now() - started, processes: spawned };
  await store.close();
  await harness.cleanup();

  inventory.start();
  await until('the subscription', () => inventory.subscriptionPid !== undefined && inventory.freshness.synced);
  // Let its connect-time resync finish, so it does not share the machine with the samples.
  await inventory.resync();
  const toEvent: number[] = [];
  const toList: number[] = [];
  for (let i = 0; i < SAMPLES; i++) {
    const vm = name(DOMAINS - 1 - i);
    stateEvents.delete(vm);
    const t0 = performance.now();
    await virsh('start', vm);
    let listedAt = 0;
    await until(`${vm} running in ListVms`, async () => {
      const listed = await vms.listVms({ nameGlob: vm, state: VmState.RUNNING }, T);
      if (listed.vms.length === 1) listedAt = performance.now();
      return listed.vms.length === 1;
    });
    await until(`${vm}'s VM_STATE_CHANGED`, () => stateEvents.has(vm));
    toEvent.push((stateEvents.get(vm) ?? NaN) - t0);
    toList.push(listedAt - t0);
  }
  toEvent.sort((a, b) => a - b);
  toList.sort((a, b) => a - b);
  await inventory.stop();
  const daemonProcesses = spawns();
  vms.close();
  await daemon.cleanup();

  const yes = (ok: boolean) => (ok ? 'yes' : '**no**');
  const cpu = cpus()[0]?.model.trim() ?? 'unknown CPU';
  const report = [
    '# VM inventory benchmark',
    '',
    `${new Date().toISOString().slice(0, 10)}, node ${process.version}, ${availableParallelism()} cores (${cpu}), shared by libvirtd, the daemon and this client.`,
    `${DOMAINS} domains on the libvirt 9.0 test driver (unprivileged libvirtd, test/support/libvirt.ts), defined in ${ms(defineMs)} ms by ${Math.ceil(DOMAINS / 250)} virsh processes.`,
    'Reproduce: `npm run bench:inventory`.',
    '',
    '| measure | figure | target | met |',
    '|---|---:|---|---|',
    `| ListVms, default page (100 VMs): host processes per call | ${listDefault.processes} | 0 | ${yes(listDefault.processes === 0)} |`,
    `| ListVms, default page: p50 / p99 / max ms at ${IN_FLIGHT} in flight (${CALLS} calls, ${listDefault.perSecond.toFixed(0)}/s) | ${ms(listDefault.p50)} / ${ms(listDefault.p99)} / ${ms(listDefault.max)} | p99 ≤ 20 ms | ${yes(listDefault.p99 <= 20)} |`,
    `| ListVms, default page, from a separate client process (bench/loadgen.ts, 1 connection): p50 / p99 ms at ${IN_FLIGHT} in flight (${rawListDefault.qps.toFixed(0)}/s over ${SEPARATE_CLIENT_SECONDS} s); daemon CPU µs per call; host processes per call | ${ms(rawListDefault.p50ms)} / ${ms(rawListDefault.p99ms)}; ${rawListDefault.serverCpuUsPerCall.toFixed(0)}; ${rawListDefault.processes} | p99 ≤ 20 ms | ${yes(rawListDefault.p99ms <= 20)} |`,
    `| ListVms, page_size 1000, the same way | ${ms(rawListFull.p50ms)} / ${ms(rawListFull.p99ms)} (${rawListFull.qps.toFixed(0)}/s); ${rawListFull.serverCpuUsPerCall.toFixed(0)}; ${rawListFull.processes} | (p99 ≤ 20 ms) | ${yes(rawListFull.p99ms <= 20)} |`,
    `| one call at a time (mean ms): ListVms default page / page_size 1000 / GetVm | ${ms(listDefault.sequentialMs)} / ${ms(listFull.sequentialMs)} / ${ms(getOne.sequentialMs)} | — | |`,
    `| ListVms handler + response encoding alone (no gRPC, no chain), in process: ms per call, default page / page_size 1000 | ${handlerDefault.toFixed(3)} / ${handlerFull.toFixed(3)} | — | |`,
    `| ListVms, page_size 1000: host processes per call | ${listFull.processes} | 0 | ${yes(listFull.processes === 0)} |`,
    `| ListVms, page_size 1000: p50 / p99 / max ms at ${IN_FLIGHT} in flight (${listFull.perSecond.toFixed(0)}/s) | ${ms(listFull.p50)} / ${ms(listFull.p99)} / ${ms(listFull.max)} | (p99 ≤ 20 ms) | ${yes(listFull.p99 <= 20)} |`,
    `| GetVm: host processes per call; p50 / p99 ms at ${IN_FLIGHT} in flight | ${getOne.processes}; ${ms(getOne.p50)} / ${ms(getOne.p99)} | 0 | ${yes(getOne.processes === 0)} |`,
    `| resync, nothing changed: host processes (ms) | ${quietResync.processes} (${ms(quietResync.ms)}) | ≤ 5 | ${yes(quietResync.processes <= 5)} |`,
    `| resync, 10 domains changed behind its back: host processes (ms) | ${changedResync.processes} (${ms(changedResync.ms)}) | ≤ 5 + 10 | ${yes(changedResync.processes <= 15)} |`,
    `| first resync (all ${DOMAINS} new, details 25 per process): host processes (ms) | ${fullResync.processes} (${ms(fullResync.ms)}) | — | |`,
    `| heartbeat publication, first (${DOMAINS} records written): host processes (ms) | ${firstPublish.processes} (${ms(firstPublish.ms)}) | no per-VM process | ${yes(firstPublish.processes === 0)} |`,
    `| heartbeat publication, nothing changed: host processes (ms) | ${quietPublish.processes} (${ms(quietPublish.ms)}) | no per-VM process | ${yes(quietPublish.processes === 0)} |`,
    `| daemon, 10 heartbeats (1 s interval, self_register) with nothing changed: host processes | ${heartbeatWindowProcesses} | 0 | ${yes(heartbeatWindowProcesses === 0)} |`,
    `| plain \`virsh start\` → VM_STATE_CHANGED (in-process inventory): p50 / max ms over ${SAMPLES} | ${ms(percentile(toEvent, 50))} / ${ms(toEvent.at(-1) ?? NaN)} | ≤ 1000 ms | ${yes((toEvent.at(-1) ?? Infinity) <= 1000)} |`,
    `| plain \`virsh start\` → ListVms (daemon) shows it running: p50 / max ms over ${SAMPLES} | ${ms(percentile(toList, 50))} / ${ms(toList.at(-1) ?? NaN)} | ≤ 1000 ms | ${yes((toList.at(-1) ?? Infinity) <= 1000)} |`,
    `| daemon start with ${DOMAINS} domains → VmService SERVING: ms; host processes | ${ms(loadMs)}; ${loadProcesses} | — | |`,
    '',
    `The daemon spawned ${daemonProcesses} virsh processes in all (${loadProcesses} to load; the rest: the VM changes of the start-to-visible samples are reloaded one process each).`,
    'The start-to-visible times include the `virsh start` process itself (its connection to libvirtd and the start), which dominates them.',
    `Load average (1 min) when the latency was measured: ${loadDuringLatency.toFixed(2)} on ${availableParallelism()} cores (other work shared the machine).`,
    'Latency is measured through the full chain (audit, RBAC, rate limit) over mTLS with the dev admin certificate, by two clients: @grpc/grpc-js in this process (it decodes every answer, on the core it shares), and bench/loadgen.ts in a process of its own (raw HTTP/2; answers counted, not decoded).',
    '',
  ].join('\n');
  writeFileSync(RESULTS, report);
  console.log(report);
} finally {
  await lv.stop();
  rmSync(work, { recursive: true, force: true });
}
