// What the interceptor chain costs: the full daemon against a bare grpc-js server.
//   npm run bench:chain
// Env: BENCH_SECONDS (measured window, default 10), BENCH_WARMUP_SECONDS (default 3),
//      BENCH_ROUNDS (default 15, about 14 minutes: each round runs every daemon scenario right
//      next to its baseline, in mirrored order from one round to the next; each figure is the
//      median over rounds and each ratio the median of the pairs' own ratios; on a shared
//      2-core VM single pairs spread by ±0.15, and 5 or 9 rounds still land either side of a
//      target 0.02 away; bench/pool.ts pools the pairs of several runs), BENCH_CONNECTIONS (4),
//      BENCH_CONCURRENCY (50),
//      BENCH_SCENARIOS (the daemon scenarios, comma list of mtls,apikey,impersonated; default all, each
//      with its baseline),
//      BENCH_PIN=1 (diagnostics: servers on CPU 0, the load generator on CPU 1, via taskset;
//      less contention noise, but not the shared-cores set-up the reported table uses),
//      BENCH_SIMULTANEOUS=1 (diagnostics: each round loads the bare server and one daemon
//      scenario at the same time, each from its own load generator, and prints the pair's
//      CPU-per-call ratio: both see the same machine, so the ratio is far steadier than
//      between runs; no report is written),
//      BENCH_CPU_PROF=<dir> (write .cpuprofiles of the daemon and the bare server to
//      <dir>/daemon and <dir>/bare, one per thread: the largest is the main thread (tsx's
//      loader thread writes one too); summarize with `tsx bench/profile.ts <file> [top] [calls]`).
//
// Four scenarios, each a unary TestingService/Echo (the same tiny handler on both servers) under the same load:
//   bare      bench/bare-server.ts: grpc-js + the daemon's TLS credentials and the
//             project's adapter, no interceptors (a child process), called with the
//             dev admin client certificate: the baseline of the mTLS scenario;
//   bare-key  the same bare server sent exactly the API key scenario's requests (CA-only
//             TLS and the authorization header, which it ignores): the baseline of the
//             API key scenario, so both ratios compare identical traffic;
//   mTLS      the full daemon (`node dist/main.js --config …`: embedded store, audit log
//             on disk, the default chain) called with the dev admin client certificate;
//   API key   the same daemon, CA-only TLS and `authorization: Bearer <key>` (a key
//             created first with CreateApiKey, permission testing:echo).
// The load comes from bench/loadgen.ts, a raw node:http2 gRPC client in its own process.
// Client and servers share the machine's cores, so the comparable figure is the
// server's CPU time per call (from /proc/<pid>/stat over the measured window).
// Writes bench/results-chain.md; any "## History" section already in it is kept.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { create, toBinary } from '@bufbuild/protobuf';
import { EchoRequestSchema } from '../src/gen/debvisor/testing/v1/testing_pb.js';
import { AccessService } from '../src/gen/debvisor/v1/access_pb.js';
import { DIST_BUILT_ENV } from '../test/support/built.js';
import { REPO_ROOT, clientFor } from '../test/support/daemon.js';
import { startTestingDaemon } from '../test/support/testing.js';
import type { LoadResult, LoadSpec } from './loadgen.js';
import { loadInProcess, spawnTs } from './spawn.js';
import { DAEMON_NODE_FLAGS } from '../src/daemon/node-flags.js';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const WARMUP_SECONDS = Number(process.env.BENCH_WARMUP_SECONDS ?? 3);
const DEFAULT_ROUNDS = 15;
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? DEFAULT_ROUNDS);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 4);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 50);
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF;
const ONLY = new Set((process.env.BENCH_SCENARIOS ?? 'mtls,apikey,impersonated').split(','));
const TARGET_QPS_RATIO = 0.85;
const TARGET_CPU_RATIO = 1.2;
const ECHO = '/debvisor.testing.v1.TestingService/Echo';
const RESULTS = new URL('results-chain.md', import.meta.url);

async function load(spec: Omit<LoadSpec, 'connections' | 'concurrency' | 'warmupMs' | 'durationMs' | 'path' | 'requestHex'>): Promise<LoadResult> {
  const full: LoadSpec = {
    ...spec,
    path: ECHO,
    requestHex: Buffer.from(toBinary(EchoRequestSchema, create(EchoRequestSchema, { text: 'ping' }))).toString('hex'),
    connections: CONNECTIONS,
    concurrency: CONCURRENCY,
    warmupMs: WARMUP_SECONDS * 1000,
    durationMs: SECONDS * 1000,
  };
  return loadInProcess(full);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

interface Row {
  name: string;
  qps: number;
  p50ms: number;
  p99ms: number;
  cpuUsPerCall: number;
  calls: number;
  errors: number;
  errorKinds: Record<string, number>;
}

function summarize(name: string, runs: LoadResult[]): Row {
  const errorKinds: Record<string, number> = {};
  for (const run of runs) for (const [kind, count] of Object.entries(run.errorKinds)) errorKinds[kind] = (errorKinds[kind] ?? 0) + count;
  return {
    name,
    qps: median(runs.map((r) => r.qps)),
    p50ms: median(runs.map((r) => r.p50ms)),
    p99ms: median(runs.map((r) => r.p99ms)),
    cpuUsPerCall: median(runs.map((r) => r.serverCpuUsPerCall)),
    calls: runs.reduce((sum, r) => sum + r.calls, 0),
    errors: runs.reduce((sum, r) => sum + r.errors, 0),
    errorKinds,
  };
}

// 1. Build dist/, which the daemon runs.
console.error('building dist/ …');
try {
  execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
} catch {
  // tsc still emits on type errors; a broken emit shows up as a daemon that does not start.
  console.error('warning: tsc reported errors (above); benchmarking what it emitted');
}
process.env[DIST_BUILT_ENV] = '1';

// 2. The full daemon (its temp dir holds the dev PKI, store, audit log and config), with
//    rate limits far above the offered load so every call is answered OK, and the test
//    service, whose Echo is the handler the bare server serves too.
const daemon = await startTestingDaemon({
  config: {
    rate_limit: { per_role_per_minute: { admin: 100_000_000, 'bench-echo': 100_000_000 }, global_per_minute: 100_000_000 },
    // The admin certificate ('*', so access:impersonate) acts for user:bench in the impersonated scenario.
    auth: { impersonation: { enabled: true } },
  },
  env: CPU_PROF_DIR ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${join(CPU_PROF_DIR, 'daemon')}` } : {},
});
const { pki } = daemon;
let bare: ReturnType<typeof spawnTs> | undefined;
type Scenario = 'bare' | 'bare-key' | 'bare-impersonate' | 'mtls' | 'apikey' | 'impersonated';
/** Each daemon scenario's baseline: the bare server under the very same requests. */
const BASELINE = { mtls: 'bare', apikey: 'bare-key', impersonated: 'bare-impersonate' } as const;
const runs: Record<Scenario, LoadResult[]> = { bare: [], 'bare-key': [], 'bare-impersonate': [], mtls: [], apikey: [], impersonated: [] };
try {
  // 3. An API key for the third scenario, made with the admin certificate.
  const admin = await clientFor(AccessService, daemon);
  const created = await admin.createApiKey({ description: 'chain benchmark', permissions: ['testing:echo'] });
  await admin.putRole({ role: { name: 'bench-echo', description: 'the impersonated scenario’s user', permissions: ['testing:echo'] } });
  await admin.bindRole({ principal: 'user:bench', roleName: 'bench-echo' });
  admin.close();
  const token = created.secret;

  // 4. The bare server, on the same dev PKI.
  bare = spawnTs(
    'bare-server.ts',
    JSON.stringify({ caFile: pki.caCert, certFile: pki.serverCert, keyFile: pki.serverKey }),
    CPU_PROF_DIR ? { ...process.env, NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${join(CPU_PROF_DIR, 'bare')}` } : process.env,
    true,
    DAEMON_NODE_FLAGS,
  );
  const barePort = (JSON.parse(await bare.firstLine()) as { port: number }).port;
  const barePid = bare.child.pid!;

  if (process.env.BENCH_PIN) for (const pid of [barePid, daemon.pid]) execFileSync('taskset', ['-a', '-p', '-c', '0', String(pid)], { stdio: 'ignore' });
  const host = '127.0.0.1';
  const apiKeyHeaders = { authorization: `Bearer ${token}` };
  const impersonateHeaders = { 'impersonate-user': 'bench' };
  const scenarios: Record<Scenario, () => Promise<LoadResult>> = {
    bare: () => load({ host, port: barePort, serverPid: barePid, caFile: pki.caCert, certFile: pki.adminCert, keyFile: pki.adminKey }),
    'bare-key': () => load({ host, port: barePort, serverPid: barePid, caFile: pki.caCert, headers: apiKeyHeaders }),
    'bare-impersonate': () => load({ host, port: barePort, serverPid: barePid, caFile: pki.caCert, certFile: pki.adminCert, keyFile: pki.adminKey, headers: impersonateHeaders }),
    mtls: () => load({ host, port: daemon.grpcPort, serverPid: daemon.pid, caFile: pki.caCert, certFile: pki.adminCert, keyFile: pki.adminKey }),
    apikey: () => load({ host, port: daemon.grpcPort, serverPid: daemon.pid, caFile: pki.caCert, headers: apiKeyHeaders }),
    impersonated: () => load({ host, port: daemon.grpcPort, serverPid: daemon.pid, caFile: pki.caCert, certFile: pki.adminCert, keyFile: pki.adminKey, headers: impersonateHeaders }),
  };
  if (process.env.BENCH_SIMULTANEOUS) {
    // Diagnostics: the bare server and one daemon scenario under load at the same time, each
    // with its own load generator, so both see the same machine (its speed drifts by more
    // than the difference measured). Prints each pair's CPU-per-call ratio; writes no report.
    const ratios: Record<string, number[]> = { mtls: [], apikey: [], impersonated: [] };
    for (let round = 1; round <= ROUNDS; round++) {
      for (const name of ['mtls', 'apikey', 'impersonated'] as const) {
        if (!ONLY.has(name)) continue;
        const [plain, full] = await Promise.all([scenarios[BASELINE[name]](), scenarios[name]()]);
        ratios[name]!.push(full.serverCpuUsPerCall / plain.serverCpuUsPerCall);
        console.error(`round ${round}: bare ${plain.serverCpuUsPerCall.toFixed(1)} µs/call, ${name} ${full.serverCpuUsPerCall.toFixed(1)} µs/call: ${(full.serverCpuUsPerCall / plain.serverCpuUsPerCall).toFixed(3)}×`);
      }
    }
    for (const [name, values] of Object.entries(ratios)) if (values.length > 0) console.error(`${name}: median ${median(values).toFixed(3)}× CPU per call (${values.map((v) => v.toFixed(2)).join(' ')})`);
  }
  // Each daemon scenario runs right next to its baseline, and the order is mirrored from
  // one round to the next (A B C D, then D C B A): the machine's speed drifts by more than
  // the difference measured, and a pair 13 s apart, in both orders, is less exposed to it than
  // scenarios up to 40 s apart were.
  const pairs = (Object.entries(BASELINE) as [keyof typeof BASELINE, Scenario][])
    .filter(([name]) => ONLY.has(name))
    .flatMap(([name, baseline]): Scenario[] => [baseline, name]);
  for (let round = 1; round <= (process.env.BENCH_SIMULTANEOUS ? 0 : ROUNDS); round++) {
    for (const name of round % 2 === 1 ? pairs : pairs.toReversed()) {
      const run = scenarios[name];
      console.error(`round ${round}/${ROUNDS}: ${name} (${WARMUP_SECONDS} s warm-up + ${SECONDS} s) …`);
      const result = await run();
      const perCall = (seconds: number) => ((seconds * 1e6) / result.calls).toFixed(1);
      const threads = Object.entries(result.serverThreadSeconds)
        .filter(([, seconds]) => seconds > 0)
        .map(([thread, seconds]) => `${thread} ${perCall(seconds)}`)
        .join(', ');
      const split = `user ${perCall(result.serverUserSeconds)} + system ${perCall(result.serverSystemSeconds)}; ${threads}`;
      console.error(
        `  ${Math.round(result.qps)} calls/s, ${result.serverCpuUsPerCall.toFixed(1)} µs CPU/call (${split}), p50 ${result.p50ms.toFixed(2)} ms, ${result.errors} errors, ${result.totalCalls} calls in all`,
      );
      runs[name].push(result);
    }
  }
} finally {
  bare?.child.kill('SIGTERM');
  await daemon.cleanup();
}

// 5. The report.
if ((Object.entries(runs) as [Scenario, LoadResult[]][]).some(([name, scenario]) => scenario.length === 0 && name !== 'impersonated' && name !== 'bare-impersonate')) {
  console.error('not all scenarios ran: no report written');
  process.exit(0);
}
const rows = [
  summarize('bare grpc-js (no interceptors), client cert', runs.bare),
  summarize('bare grpc-js, API key header (ignored)', runs['bare-key']),
  summarize('full daemon, mTLS client cert', runs.mtls),
  summarize('full daemon, API key', runs.apikey),
  ...(runs.impersonated.length > 0
    ? [summarize('bare grpc-js, client cert + impersonate-user header (ignored)', runs['bare-impersonate']), summarize('full daemon, client cert acting for a user (impersonate-user)', runs.impersonated)]
    : []),
];
// Ratios are taken within each round (the scenarios of a round ran minutes apart at most)
// and then their median over rounds: the machine's speed drifts by more than the
// difference being measured, and a per-round ratio cancels most of that drift.
interface Ratios {
  qps: number[];
  cpu: number[];
}
const ratiosOf = (scenario: LoadResult[], baseline: LoadResult[]): Ratios => ({
  qps: scenario.map((run, i) => run.qps / baseline[i]!.qps),
  cpu: scenario.map((run, i) => run.serverCpuUsPerCall / baseline[i]!.serverCpuUsPerCall),
});
const ratios = new Map<Row, Ratios>([
  [rows[2]!, ratiosOf(runs.mtls, runs[BASELINE.mtls])],
  [rows[3]!, ratiosOf(runs.apikey, runs[BASELINE.apikey])],
  ...(runs.impersonated.length > 0 ? [[rows[5]!, ratiosOf(runs.impersonated, runs[BASELINE.impersonated])] as [Row, Ratios]] : []),
]);
// For comparison with earlier reports, which measured both daemon scenarios against the client-cert baseline.
const apiKeyAgainstCertBaseline = ratiosOf(runs.apikey, runs.bare);
const ratio = (values: number[] | undefined) => {
  if (!values) return '1.00×';
  const spread = values.length > 1 ? ` (${Math.min(...values).toFixed(2)}–${Math.max(...values).toFixed(2)})` : '';
  return `${median(values).toFixed(2)}×${spread}`;
};
const verdict = (row: Row) => {
  const own = ratios.get(row);
  if (!own) return '';
  const qpsOk = median(own.qps) >= TARGET_QPS_RATIO;
  const cpuOk = median(own.cpu) <= TARGET_CPU_RATIO;
  return qpsOk && cpuOk && row.errors === 0 ? 'yes' : `**no**${qpsOk ? '' : ' (QPS)'}${cpuOk ? '' : ' (CPU)'}${row.errors ? ' (errors)' : ''}`;
};
const cpuModel = cpus()[0]?.model ?? 'unknown CPU';
const lines = [
  '# Chain benchmark',
  '',
  `${new Date().toISOString().slice(0, 10)}, node ${process.version}, ${availableParallelism()} cores (${cpuModel}), shared by the server under test and the load generator.`,
  `Unary TestingService/Echo (the same handler on both servers), ${CONCURRENCY} calls in flight over ${CONNECTIONS} TLS connections from a raw node:http2 client in its own process;`,
  `${WARMUP_SECONDS} s warm-up, then ${SECONDS} s measured${ROUNDS > 1 ? `, ${ROUNDS} rounds, each running every daemon scenario right after or before its own baseline (mirrored order from round to round); figures are medians over rounds, ratios the median of each adjacent pair's own ratio (range in brackets)` : ''}. CPU is the server process's utime+stime over the measured window, per successful call.`,
  `Reproduce: \`npm run bench:chain\`${ROUNDS !== DEFAULT_ROUNDS ? ` (this table: \`BENCH_ROUNDS=${ROUNDS} npm run bench:chain\`)` : ''}.`,
  '',
  `Targets: full chain ≥ ${TARGET_QPS_RATIO}× its bare QPS and ≤ ${TARGET_CPU_RATIO}× its bare CPU per call, 0 errors.`,
  '',
  '| scenario | calls/s | p50 ms | p99 ms | server CPU µs/call | QPS vs its bare | CPU/call vs its bare | errors | target met |',
  '|---|---:|---:|---:|---:|---:|---:|---:|---|',
  ...rows.map(
    (r) =>
      `| ${r.name} | ${Math.round(r.qps)} | ${r.p50ms.toFixed(2)} | ${r.p99ms.toFixed(2)} | ${r.cpuUsPerCall.toFixed(1)} | ${ratio(ratios.get(r)?.qps)} | ${ratio(ratios.get(r)?.cpu)} | ${r.errors} | ${verdict(r)} |`,
  ),
  '',
  'Each daemon scenario is compared with the bare server under the very same requests, in the same round: mTLS with the client-cert bare row,',
  'the API key with the API-key-header bare row (CA-only TLS; the bare server ignores the header, but grpc-js and HTTP/2 still receive and',
  `validate it). Against the client-cert baseline, as reported before this split, the API key scenario is ${ratio(apiKeyAgainstCertBaseline.cpu)} CPU/call and ${ratio(apiKeyAgainstCertBaseline.qps)} QPS.`,
  '',
  'bare = bench/bare-server.ts: grpc-js with the daemon’s own `serverCredentials`/`IdentityProvider` (dev PKI server pair and CA; client certificates',
  'requested, not required), the daemon’s default grpc-js options and V8 flags (src/daemon/node-flags.ts), and the project’s adapter (src/rpc/adapter.ts) serving the daemon’s own Echo',
  'handler, all loaded from the same compiled dist/ the daemon runs (node without tsx); no interceptors. Full daemon = `node dist/main.js',
  '--config … --enable-test-service` with the embedded store, the audit log on disk (HMAC-chained, fsynced) and the default chain (observe,',
  'recovery, identity, audit, rate limit, RBAC) in front of the same Echo handler; rate limits raised so no call is refused.',
  ...(rows.some((r) => r.errors > 0) ? ['', `Errors: ${rows.map((r) => `${r.name}: ${JSON.stringify(r.errorKinds)}`).join('; ')}`] : []),
];
const previous = existsSync(RESULTS) ? readFileSync(RESULTS, 'utf8') : '';
const historyAt = previous.indexOf('\n## History');
const history = historyAt >= 0 ? previous.slice(historyAt) : '';
writeFileSync(RESULTS, `${lines.join('\n')}\n${history}`);
console.log(lines.join('\n'));
if (rows.slice(1).some((r) => r.errors > 0)) process.exitCode = 1;
