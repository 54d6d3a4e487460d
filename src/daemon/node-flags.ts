// The V8 flags every launcher of the daemon passes to node (bin/debvisor-rpcd, the Debian
// package's /usr/bin/debvisor-rpcd, scripts/dev and the tests' daemon). They only work on
// node's command line: V8 sizes its heap when the process starts.
//
// --max-semi-space-size=16: V8's default young generation on a 64-bit host grows to 128 MiB
// under a high allocation rate, such as WatchEvents fan-out to hundreds of streams, and the
// process keeps that memory. Capped at 2 × 16 MiB, the daemon's RSS stays ~60 MiB lower at
// 500 streams with the same fan-out latency (bench/results-events.md).
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=16'];

/** The flags of DAEMON_NODE_FLAGS that node was not started with. */
export function missingNodeFlags(execArgv: readonly string[] = process.execArgv): string[] {
  return DAEMON_NODE_FLAGS.filter((flag) => !execArgv.includes(flag));
}
