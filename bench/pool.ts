// Pools the adjacent pairs of several chain benchmark runs (their stderr, saved to files):
//   npm run bench:chain 2> run1.log; …; tsx bench/pool.ts run1.log run2.log …
// Prints, per daemon scenario, each run's median pair ratios and, over all pairs, the
// median CPU-per-call and QPS ratios with 95% bootstrap intervals of the median and how
// many pairs are at or under the 1.2× CPU target. One run's pairs spread by ±0.15 on a
// shared VM; pooling runs narrows what the target can be judged against.
import { readFileSync } from 'node:fs';
import { seededRandom } from '../test/support/random.js';

const BASELINE = { mtls: 'bare', apikey: 'bare-key' } as const;
const RESAMPLES = 5000;

interface Measured {
  qps: number;
  cpu: number;
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function interval(values: readonly number[]): string {
  // Seeded, so the intervals are the same on every run.
  const next = seededRandom(1);
  const medians = Array.from({ length: RESAMPLES }, () => median(values.map(() => values[Math.floor(next() * values.length)]!))).sort((a, b) => a - b);
  return `${medians[Math.floor(RESAMPLES * 0.025)]!.toFixed(2)}–${medians[Math.floor(RESAMPLES * 0.975)]!.toFixed(2)}`;
}

/** Each round's figures by scenario, from a run's progress lines. */
function rounds(file: string): Map<number, Map<string, Measured>> {
  const byRound = new Map<number, Map<string, Measured>>();
  let current: { round: number; scenario: string } | undefined;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const started = /^round (\d+)\/\d+: (\S+) /.exec(line);
    if (started) {
      current = { round: Number(started[1]), scenario: started[2]! };
      continue;
    }
    const result = /([\d.]+) calls\/s, ([\d.]+) µs CPU\/call/.exec(line);
    if (result && current) {
      const round = byRound.get(current.round) ?? new Map<string, Measured>();
      round.set(current.scenario, { qps: Number(result[1]), cpu: Number(result[2]) });
      byRound.set(current.round, round);
      current = undefined;
    }
  }
  return byRound;
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: tsx bench/pool.ts <stderr of npm run bench:chain> …');
  process.exit(2);
}
for (const [scenario, baseline] of Object.entries(BASELINE)) {
  const cpu: number[] = [];
  const qps: number[] = [];
  for (const file of files) {
    const runCpu: number[] = [];
    for (const round of rounds(file).values()) {
      const full = round.get(scenario);
      const bare = round.get(baseline);
      if (!full || !bare) continue;
      runCpu.push(full.cpu / bare.cpu);
      cpu.push(full.cpu / bare.cpu);
      qps.push(full.qps / bare.qps);
    }
    if (runCpu.length > 0) console.log(`${file} ${scenario}: ${runCpu.length} pairs, CPU per call ${median(runCpu).toFixed(2)}×`);
  }
  if (cpu.length === 0) continue;
  const under = cpu.filter((ratio) => ratio <= 1.2).length;
  console.log(
    `${scenario}, ${cpu.length} pairs pooled: CPU per call ${median(cpu).toFixed(2)}× (${interval(cpu)}), QPS ${median(qps).toFixed(2)}× (${interval(qps)}); ${under} of ${cpu.length} pairs at or under 1.2× CPU`,
  );
}
