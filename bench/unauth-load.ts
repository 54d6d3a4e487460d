// A legitimate mTLS client's latency under unauthenticated load (issue 17), against the
// real daemon with its default configuration (but the admin's own rate limit):
//   npm run bench:unauth-load        (calls per phase: BENCH_CALLS, default 500; rounds: BENCH_ROUNDS, default 3)
// For each load (reflection flood, idle TLS connections, half-open handshakes; see
// test/e2e/unauth-loadgen.ts) and each round it measures the client's WhoAmI latency
// without load, then with it, in the same run, and prints p50/p99/max and the ratio of the
// loaded p99 to the baseline p99. The target is a loaded p99 under 200 ms.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { DIST_BUILT_ENV } from '../test/support/built.js';
import { REPO_ROOT, startDaemon } from '../test/support/daemon.js';
import { LEGIT_CONFIG, legitClient, legitLatencies, underLoad, type Latencies, type LoadKind } from '../test/support/unauth-load.js';

const CALLS = Number(process.env.BENCH_CALLS ?? 500);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);

console.error('building dist/ …');
execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, stdio: 'inherit' });
process.env[DIST_BUILT_ENV] = '1';

const daemon = await startDaemon({ config: LEGIT_CONFIG, readyTimeoutMs: 90_000 });
const client = await legitClient(daemon);
const fmt = (l: Latencies) => `p50 ${l.p50.toFixed(1)} ms, p99 ${l.p99.toFixed(1)} ms, max ${l.max.toFixed(1)} ms, failures ${JSON.stringify(l.failedCodes)}`;
try {
  for (let round = 1; round <= ROUNDS; round++) {
    for (const kind of ['reflection', 'idle', 'halfopen'] satisfies LoadKind[]) {
      const baseline = await legitLatencies(client, CALLS);
      const { result: loaded, load } = await underLoad(daemon, kind, () => legitLatencies(client, CALLS));
      console.log(`round ${round} ${kind.padEnd(10)} baseline ${fmt(baseline)} | loaded ${fmt(loaded)} | p99 ratio ${(loaded.p99 / baseline.p99).toFixed(2)}× | load ${JSON.stringify(load)}`);
    }
  }
} finally {
  client.close();
  await daemon.cleanup();
}
