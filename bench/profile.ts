// Summarizes a V8 .cpuprofile (e.g. from BENCH_CPU_PROF=<dir> npm run bench:chain):
//   tsx bench/profile.ts <file.cpuprofile> [top=40] [calls]
// Prints the functions with the most self time, and the most inclusive time, as % of
// samples; given the number of calls the process served, as µs per call instead.
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
}

const file = process.argv[2];
if (!file) throw new Error('usage: tsx bench/profile.ts <file.cpuprofile> [top]');
const top = Number(process.argv[3] ?? 40);
const calls = process.argv[4] === undefined ? undefined : Number(process.argv[4]);
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile & { startTime: number; endTime: number };
const byId = new Map(profile.nodes.map((node) => [node.id, node]));
const parent = new Map<number, number>();
for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);

const label = (node: ProfileNode) => {
  const { functionName, url, lineNumber } = node.callFrame;
  const where = url ? `${url.replace(/^.*\/(node_modules|dist|src)\//, '$1/')}:${lineNumber + 1}` : '';
  return `${functionName || '(anonymous)'} ${where}`.trim();
};

const self = new Map<string, number>();
const total = new Map<string, number>();
let samples = 0;
for (const id of profile.samples) {
  const node = byId.get(id);
  if (!node) continue;
  samples++;
  self.set(label(node), (self.get(label(node)) ?? 0) + 1);
  const seen = new Set<string>();
  for (let current: number | undefined = id; current !== undefined; current = parent.get(current)) {
    const l = label(byId.get(current)!);
    if (seen.has(l)) continue;
    seen.add(l);
    total.set(l, (total.get(l) ?? 0) + 1);
  }
}

const usPerSample = (profile.endTime - profile.startTime) / Math.max(1, samples);
const print = (title: string, map: Map<string, number>) => {
  console.log(`\n${title} (${samples} samples${calls ? `, µs per call over ${calls} calls` : ''})`);
  for (const [name, count] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    const figure = calls ? `${((count * usPerSample) / calls).toFixed(2).padStart(7)} µs` : `${((100 * count) / samples).toFixed(1).padStart(5)}%`;
    console.log(`${figure}  ${name}`);
  }
};
print('self time', self);
print('inclusive time', total);
