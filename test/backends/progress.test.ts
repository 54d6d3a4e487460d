// Progress parsing from rbd's stderr and qemu-img -p's stdout: real captured output,
// arbitrary chunk boundaries, monotonic and deduplicated percentages.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { createExecutor } from '../../src/backends/exec.js';
import { progressParser } from '../../src/backends/progress.js';

/** Captured from `qemu-img convert -p -O qcow2` (qemu-img 7.2, Debian 12) of a 64 MiB file: "    (N.NN/100%)\r" on stdout. */
const QEMU_IMG_CAPTURE = readFileSync(new URL('./fixtures/qemu-img-convert-p.stdout', import.meta.url), 'utf8');

/** rbd's ProgressContext: each update starts with \r; the last ends in "...done." and a newline. */
const RBD_REMOVE = [
  '\rRemoving image: 1% complete...',
  '\rRemoving image: 2% complete...',
  '\rRemoving image: 2% complete...',
  '\rRemoving image: 3% complete...',
  '\rRemoving image: 50% complete...',
  '\rRemoving image: 99% complete...',
  '\rRemoving image: 100% complete...done.\n',
].join('');
const RBD_EXPORT = '\rImage export: 12% complete...\rImage export: 45% complete...\rImage export: 100% complete...done.\n';
const RBD_FLATTEN = 'some warning line\n\rImage flatten: 7% complete...\rImage flatten: 64% complete...\rImage flatten: 100% complete...done.\n';

function collect(chunks: string[]): number[] {
  const seen: number[] = [];
  const feed = progressParser((p) => seen.push(p));
  for (const c of chunks) feed(c);
  return seen;
}

/** Splits text into pieces of `size` code units (cuts anywhere, including mid-number). */
function pieces(text: string, size: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
  return out;
}

function expectMonotonic(seen: number[]): void {
  for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeGreaterThan(seen[i - 1]!);
  for (const p of seen) {
    expect(Number.isInteger(p)).toBe(true);
    expect(p).toBeGreaterThanOrEqual(0);
    expect(p).toBeLessThanOrEqual(100);
  }
}

describe('progressParser', () => {
  it('parses rbd remove progress, deduplicated', () => {
    expect(collect([RBD_REMOVE])).toEqual([1, 2, 3, 50, 99, 100]);
  });

  it('reports the newest rbd update at once, though it has no terminator yet', () => {
    const seen: number[] = [];
    const feed = progressParser((p) => seen.push(p));
    feed('\rImage export: 12% complete...');
    expect(seen).toEqual([12]);
    feed('\rImage export: 45% complete...');
    expect(seen).toEqual([12, 45]);
  });

  it('parses rbd export and flatten progress', () => {
    expect(collect([RBD_EXPORT])).toEqual([12, 45, 100]);
    expect(collect([RBD_FLATTEN])).toEqual([7, 64, 100]);
  });

  it('parses real qemu-img -p output: floors decimals, ends at 100', () => {
    const seen = collect([QEMU_IMG_CAPTURE]);
    expect(seen[0]).toBe(0);
    expect(seen.at(-1)).toBe(100);
    expect(seen).toContain(3); // 3.12
    expect(seen).toContain(96); // 96.88
    expectMonotonic(seen);
  });

  it('gives the same sequence for any chunk boundaries', () => {
    for (const text of [QEMU_IMG_CAPTURE, RBD_REMOVE, RBD_EXPORT, RBD_FLATTEN]) {
      const whole = collect([text]);
      for (let size = 1; size <= 23; size++) expect(collect(pieces(text, size)), `size ${size}`).toEqual(whole);
    }
  });

  it('ignores regressions, out-of-range numbers and unrelated text', () => {
    expect(collect(['\rA: 40% complete...', '\rB: 10% complete...', '\rB: 41% complete...'])).toEqual([40, 41]);
    expect(collect(['\rA: 150% complete...', ' (250.00/100%)\r', 'copied 1234% complete\n', 'no progress here\n'])).toEqual([]);
    expect(collect(['(12.99/100%)\r(13.01/100%)\r'])).toEqual([12, 13]);
    expect(collect(['Removing image: 5% complete...\r\nRemoving image: 6% complete...\n'])).toEqual([5, 6]);
  });

  it('bounds what it buffers for an endless unterminated line', () => {
    const seen: number[] = [];
    const feed = progressParser((p) => seen.push(p));
    for (let i = 0; i < 1000; i++) feed('x'.repeat(1000));
    feed(' (42.00/100%)\r');
    expect(seen).toEqual([42]);
  });
});

describe('qemu-img -p through the executor', () => {
  it.skipIf(!existsSync('/usr/bin/qemu-img'))('streams real progress from a conversion', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'debvisor-progress-'));
    try {
      const src = join(dir, 'src.raw');
      writeFileSync(src, Buffer.alloc(16 * 1024 * 1024, 1));
      const exec = createExecutor({
        backend: 'qemu',
        binaries: { 'qemu-img': '/usr/bin/qemu-img' },
        envAllowList: [],
        maxConcurrent: 1,
        defaultTimeoutMs: 30_000,
        maxOutputBytes: 64 * 1024,
        killGraceMs: 500,
        registry: new Registry(),
      });
      const seen: number[] = [];
      const result = await exec.run('qemu-img', ['convert', '-p', '-f', 'raw', '-O', 'qcow2', '--', src, join(dir, 'dst.qcow2')], {
        onStdoutChunk: progressParser((p) => seen.push(p)),
      });
      exec.check(result);
      expect(seen[0]).toBe(0);
      expect(seen.at(-1)).toBe(100);
      expect(seen.length).toBeGreaterThan(2);
      expectMonotonic(seen);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
