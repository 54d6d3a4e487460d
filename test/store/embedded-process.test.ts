// The embedded store across processes: the data-directory lock and durability under
// kill -9. Children run the built module from dist/ (built by the global setup).
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { openEmbeddedStore } from '../../src/store/embedded/store.js';
import type { Store } from '../../src/store/store.js';
import { requireBuiltDist } from '../support/built.js';

const root = mkdtempSync(join(tmpdir(), 'debvisor-embedded-proc-'));
requireBuiltDist();
const moduleUrl = pathToFileURL(resolve('dist/store/embedded/store.js')).href;
const dec = (bytes: Uint8Array) => new TextDecoder().decode(bytes);

// argv: dir, mode ('hold': open and wait; 'write': put forever, printing each acknowledged key).
const child = join(root, 'child.mjs');
writeFileSync(
  child,
  `import { openEmbeddedStore } from ${JSON.stringify(moduleUrl)};
const [dir, mode] = process.argv.slice(2);
let store;
try {
  store = await openEmbeddedStore({ dir });
} catch (err) {
  process.stdout.write('error ' + err.message + '\\n');
  process.exit(3);
}
process.stdout.write('ready\\n');
if (mode === 'write') {
  for (let i = 0; ; i++) {
    const key = '/durable/' + String(i).padStart(6, '0');
    await store.put(key, new TextEncoder().encode('value ' + i));
    process.stdout.write('ack ' + key + '\\n');
  }
} else {
  setInterval(() => undefined, 1000);
}
`,
);

type Child = ChildProcessByStdio<null, Readable, Readable>;
const children: Child[] = [];

function start(dir: string, mode: 'hold' | 'write'): { proc: Child; lines: AsyncIterator<string> } {
  const proc = spawn(process.execPath, [child, dir, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(proc);
  let stderr = '';
  proc.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  proc.on('exit', (code) => {
    if (code !== 0 && code !== 3 && code !== null) console.error(`child exited ${code}: ${stderr}`);
  });
  return { proc, lines: createInterface({ input: proc.stdout })[Symbol.asyncIterator]() };
}

async function nextLine(lines: AsyncIterator<string>): Promise<string> {
  const line = await lines.next();
  if (line.done) throw new Error('child ended its output');
  return line.value;
}

function killed(proc: Child): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((done) => {
    proc.once('exit', () => done());
    proc.kill('SIGKILL');
  });
}

afterEach(async () => {
  await Promise.all(children.splice(0).map(killed));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('embedded store across processes', () => {
  it('refuses a directory held by another process, naming its pid, until that process dies', async () => {
    const dir = join(root, 'locked');
    const holder = start(dir, 'hold');
    expect(await nextLine(holder.lines)).toBe('ready');

    await expect(openEmbeddedStore({ dir })).rejects.toThrow(`data directory ${dir} is in use by another debvisor-rpcd (pid ${holder.proc.pid})`);
    const second = start(dir, 'hold');
    expect(await nextLine(second.lines)).toBe(`error data directory ${dir} is in use by another debvisor-rpcd (pid ${holder.proc.pid})`);

    await killed(holder.proc);
    const store = await openEmbeddedStore({ dir });
    await store.ping();
    await store.close();
  });

  it('keeps every acknowledged write through kill -9', async () => {
    const dir = join(root, 'durable');
    const writer = start(dir, 'write');
    expect(await nextLine(writer.lines)).toBe('ready');
    const acked: string[] = [];
    while (acked.length < 500) acked.push((await nextLine(writer.lines)).replace(/^ack /, ''));
    await killed(writer.proc); // mid-stream: it was still writing

    let store: Store | undefined;
    try {
      store = await openEmbeddedStore({ dir });
      const { kvs, revision } = await store.list('/durable/');
      expect(kvs.length).toBeGreaterThanOrEqual(500);
      expect(revision).toBe(kvs.length);
      const present = new Map(kvs.map((kv) => [kv.key, dec(kv.value)]));
      for (const [i, key] of acked.entries()) expect(present.get(key), key).toBe(`value ${i}`);
      // The reopened store carries on from the recovered revision.
      expect((await store.put('/after', new Uint8Array())).revision).toBe(revision + 1);
    } finally {
      await store?.close();
    }
  });
});
