// The exec layer against real processes: no shell, process-group kills on cancel and
// timeout, output caps, environment allow-list, the concurrency limit, typed errors and
// their gRPC mapping, and the metrics.
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  ExecError,
  ExecUsageError,
  classify,
  createExecutor,
  type ExecResult,
  type ExecutorOptions,
  type SpawnEvent,
} from '../../src/backends/exec.js';
import { RpcError, toStatus } from '../../src/rpc/errors.js';

/** A file without any execute bit: spawning it fails with EACCES, even for root. */
const SCRATCH = mkdtempSync(join(tmpdir(), 'debvisor-exec-'));
const NOT_EXECUTABLE = join(SCRATCH, 'tool');
writeFileSync(NOT_EXECUTABLE, '#!/bin/sh\necho should-not-run\n');
chmodSync(NOT_EXECUTABLE, 0o644);

const BINARIES = {
  echo: '/bin/echo',
  sleep: '/bin/sleep',
  sh: '/bin/sh',
  head: '/usr/bin/head',
  env: '/usr/bin/env',
  cat: '/bin/cat',
  missing: '/nonexistent/debvisor-no-such-tool',
  notExecutable: NOT_EXECUTABLE,
};

function executor(overrides: Partial<ExecutorOptions> = {}) {
  const registry = overrides.registry ?? new Registry();
  const spawns: SpawnEvent[] = [];
  const exec = createExecutor({
    backend: 'test',
    binaries: BINARIES,
    envAllowList: ['PATH'],
    maxConcurrent: 4,
    defaultTimeoutMs: 10_000,
    maxOutputBytes: 1 << 20,
    killGraceMs: 300,
    registry,
    onSpawn: (e) => spawns.push(e),
    ...overrides,
  });
  return { exec, registry, spawns };
}

/** Alive and not a zombie (an orphan is reaped by init a moment after it dies). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

async function waitUntilDead(pids: number[], ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (pids.every((p) => !alive(p))) return true;
    await new Promise((r) => setTimeout(r, 25));
  }
  return false;
}

/** Starts `sh` printing "$$ $!" for a backgrounded sleep, then waiting; resolves the two pids once printed. */
function groupScript(script: string): { args: string[]; pids: Promise<[number, number]>; onStdoutChunk: (c: string) => void } {
  let out = '';
  let resolvePids: (p: [number, number]) => void = () => undefined;
  const pids = new Promise<[number, number]>((r) => (resolvePids = r));
  return {
    args: ['-c', script],
    pids,
    onStdoutChunk: (c) => {
      out += c;
      const m = /^(\d+) (\d+)\n/.exec(out);
      if (m) resolvePids([Number(m[1]), Number(m[2])]);
    },
  };
}

afterAll(() => rmSync(SCRATCH, { recursive: true, force: true }));

const leftovers: number[] = [];
afterEach(() => {
  for (const pid of leftovers.splice(0)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
});

async function caught(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('no shell', () => {
  it('passes arguments to /bin/echo verbatim', async () => {
    const { exec, spawns } = executor();
    const args = ['a;b', '$(id)', '`id`', '*', '$HOME', "it's", '"q"', '|', '>x', '&&', 'a b', '\\', '~', '#c'];
    const result = await exec.run('echo', args);
    expect(result).toMatchObject({ command: 'echo', code: 0, signal: null, stderr: '', truncated: false });
    expect(result.stdout).toBe(`${args.join(' ')}\n`);
    expect(result.durationMs).toBeGreaterThan(0);
    expect(spawns).toEqual([{ backend: 'test', command: 'echo', path: '/bin/echo', args }]);
  });

  it('passes stdin and returns non-zero exits as results', async () => {
    const { exec } = executor();
    const cat = await exec.run('cat', [], { stdin: new TextEncoder().encode('hello\0world') });
    expect(cat.stdout).toBe('hello\0world');
    const fail = await exec.run('sh', ['-c', 'echo oops >&2; exit 3']);
    expect(fail).toMatchObject({ code: 3, stderr: 'oops\n' });
  });

  it('reports a child killed by a signal as 128 + signo', async () => {
    const { exec } = executor();
    const r = await exec.run('sh', ['-c', 'kill -9 $$']);
    expect(r).toMatchObject({ code: 137, signal: 'SIGKILL' });
  });
});

describe('argument and construction checks', () => {
  it('refuses relative binary paths at construction', () => {
    expect(() => executor({ binaries: { virsh: 'virsh' } })).toThrow(ExecUsageError);
    expect(() => executor({ binaries: { virsh: './bin/virsh' } })).toThrow(/absolute/);
    expect(() => executor({ binaries: { virsh: '/usr/bin/vi\0rsh' } })).toThrow(ExecUsageError);
    expect(() => executor({ maxConcurrent: 0 })).toThrow(ExecUsageError);
    expect(() => executor({ envAllowList: ['A=B'] })).toThrow(ExecUsageError);
  });

  it('refuses unknown commands, NUL, line breaks and non-strings without spawning', async () => {
    const { exec, spawns } = executor();
    await expect(exec.run('rm', ['-rf', '/'])).rejects.toBeInstanceOf(ExecUsageError);
    await expect(exec.run('echo', ['a\0b'])).rejects.toThrow(/NUL/);
    await expect(exec.run('echo', ['a\nb'])).rejects.toThrow(/line break/);
    await expect(exec.run('echo', ['a\rb'])).rejects.toThrow(/line break/);
    await expect(exec.run('echo', [42 as unknown as string])).rejects.toThrow(/string/);
    expect(spawns).toEqual([]);
    // A programming error, not a client error: INTERNAL with the generic message.
    const st = toStatus(await caught(exec.run('echo', ['a\0b'])), 't');
    expect(st.code).toBe(Status.INTERNAL);
    expect(st.details).not.toContain('NUL');
  });
});

describe('cancellation and timeouts kill the whole process group', () => {
  it('cancellation kills the child and its grandchild', async () => {
    const { exec } = executor();
    const controller = new AbortController();
    const s = groupScript('sleep 30 & echo $$ $!; wait');
    const running = exec.run('sh', s.args, { signal: controller.signal, onStdoutChunk: s.onStdoutChunk });
    const [shPid, sleepPid] = await s.pids;
    leftovers.push(shPid, sleepPid);
    expect(alive(shPid) && alive(sleepPid)).toBe(true);
    const t0 = performance.now();
    controller.abort();
    const err = await caught(running);
    expect(err).toBeInstanceOf(ExecError);
    expect(err).toMatchObject({ kind: 'cancelled', command: 'sh' });
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(await waitUntilDead([shPid, sleepPid])).toBe(true);
    expect(toStatus(err, 't').code).toBe(Status.CANCELLED);
    expect(exec.stats.running).toBe(0);
  });

  it('escalates to SIGKILL when the group ignores SIGTERM', async () => {
    const { exec } = executor({ killGraceMs: 400 });
    const controller = new AbortController();
    const s = groupScript("trap '' TERM; sleep 30 & echo $$ $!; wait");
    const running = exec.run('sh', s.args, { signal: controller.signal, onStdoutChunk: s.onStdoutChunk });
    const [shPid, sleepPid] = await s.pids;
    leftovers.push(shPid, sleepPid);
    const t0 = performance.now();
    controller.abort();
    await expect(running).rejects.toMatchObject({ kind: 'cancelled' });
    const elapsed = performance.now() - t0;
    expect(elapsed).toBeGreaterThanOrEqual(390);
    expect(elapsed).toBeLessThan(3000);
    expect(await waitUntilDead([shPid, sleepPid])).toBe(true);
  });

  it('a timeout gives kind timeout and DEADLINE_EXCEEDED, without stderr in the client message', async () => {
    const { exec, registry } = executor();
    const s = groupScript('echo secret-stderr-detail >&2; sleep 30 & echo $$ $!; wait');
    const t0 = performance.now();
    const err = await caught(exec.run('sh', s.args, { timeoutMs: 300, onStdoutChunk: s.onStdoutChunk }));
    const [shPid, sleepPid] = await s.pids;
    leftovers.push(shPid, sleepPid);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290);
    expect(err).toMatchObject({ kind: 'timeout', command: 'sh' });
    expect((err as ExecError).stderr).toContain('secret-stderr-detail'); // kept for the log
    const st = toStatus(err, 't');
    expect(st.code).toBe(Status.DEADLINE_EXCEEDED);
    expect(st.details).not.toContain('secret');
    expect(await waitUntilDead([shPid, sleepPid])).toBe(true);
    expect(await registry.metrics()).toMatch(/backend_command_duration_seconds_count\{backend_service="test",command="sh",result="timeout"\} 1/);
  });

  it('the call deadline as abort reason counts as a timeout', async () => {
    const { exec } = executor();
    await expect(exec.run('sleep', ['30'], { signal: AbortSignal.timeout(150) })).rejects.toMatchObject({ kind: 'timeout' });
    const controller = new AbortController();
    const running = exec.run('sleep', ['30'], { signal: controller.signal });
    setTimeout(() => controller.abort(new RpcError('DEADLINE_EXCEEDED', 'deadline exceeded')), 100);
    await expect(running).rejects.toMatchObject({ kind: 'timeout' });
  });

  it('does not wait for a finished command whose descendant still holds the pipes', async () => {
    const { exec } = executor({ killGraceMs: 200 });
    const s = groupScript('sleep 30 & echo $$ $!');
    const t0 = performance.now();
    const r = await exec.run('sh', s.args, { onStdoutChunk: s.onStdoutChunk });
    const [shPid, sleepPid] = await s.pids;
    leftovers.push(shPid, sleepPid);
    expect(r).toMatchObject({ code: 0, truncated: false });
    expect(performance.now() - t0).toBeLessThan(2000);
    expect(await waitUntilDead([sleepPid])).toBe(true);
  });

  it('stops reading from a descendant that escaped the group (setsid) and flags the result', async () => {
    const { exec } = executor({ killGraceMs: 100 });
    const s = groupScript('setsid sleep 30 & echo $$ $!');
    const t0 = performance.now();
    const r = await exec.run('sh', s.args, { onStdoutChunk: s.onStdoutChunk });
    const [, escapedPid] = await s.pids;
    leftovers.push(escapedPid);
    expect(r).toMatchObject({ code: 0, truncated: true });
    expect(performance.now() - t0).toBeLessThan(3000);
  });

  it('an already-aborted signal spawns nothing', async () => {
    const { exec, spawns } = executor();
    await expect(exec.run('echo', ['x'], { signal: AbortSignal.abort() })).rejects.toMatchObject({ kind: 'cancelled' });
    expect(spawns).toEqual([]);
  });
});

describe('output caps', () => {
  it('caps stdout at maxOutputBytes and flags the result', async () => {
    const { exec } = executor({ maxOutputBytes: 64 * 1024 });
    const r = await exec.run('head', ['-c', '1000000', '/dev/zero']);
    expect(r.code).toBe(0);
    expect(r.truncated).toBe(true);
    expect(r.stdout.length).toBe(64 * 1024);
    const small = await exec.run('head', ['-c', '1000', '/dev/zero']);
    expect(small).toMatchObject({ truncated: false });
    expect(small.stdout.length).toBe(1000);
  });

  it('caps stderr too, while line callbacks still see every line', async () => {
    const { exec } = executor({ maxOutputBytes: 1024 });
    const lines: string[] = [];
    const r = await exec.run('sh', ['-c', 'i=0; while [ $i -lt 500 ]; do printf "line %d\\r" $i >&2; i=$((i+1)); done; echo end >&2'], {
      onStderrLine: (l) => lines.push(l),
    });
    expect(r.truncated).toBe(true);
    expect(r.stderr.length).toBe(1024);
    expect(lines).toHaveLength(501);
    expect(lines[0]).toBe('line 0');
    expect(lines.at(-1)).toBe('end');
  });
});

describe('environment', () => {
  it('passes only allow-listed variables, extraEnv and LC_ALL=C', async () => {
    process.env.DEBVISOR_TEST_ALLOWED = 'yes';
    process.env.DEBVISOR_TEST_SECRET = 'must-not-leak';
    try {
      const { exec } = executor({ envAllowList: ['DEBVISOR_TEST_ALLOWED', 'PATH', 'DEBVISOR_TEST_UNSET'], extraEnv: { LVM_SYSTEM_DIR: '/tmp/lvm' } });
      const r = await exec.run('env', []);
      const env = Object.fromEntries(
        r.stdout
          .trim()
          .split('\n')
          .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      );
      expect(Object.keys(env).sort()).toEqual(['DEBVISOR_TEST_ALLOWED', 'LC_ALL', 'LVM_SYSTEM_DIR', 'PATH']);
      expect(env).toMatchObject({ DEBVISOR_TEST_ALLOWED: 'yes', LC_ALL: 'C', LVM_SYSTEM_DIR: '/tmp/lvm', PATH: process.env.PATH });
      expect(r.stdout).not.toContain('must-not-leak');
    } finally {
      delete process.env.DEBVISOR_TEST_ALLOWED;
      delete process.env.DEBVISOR_TEST_SECRET;
    }
  });
});

describe('DEBVISOR_EXEC_TRACE (a test and debugging aid)', () => {
  it('appends each argv as a JSON line before spawning, and nothing when unset', async () => {
    const file = join(SCRATCH, 'exec-trace.jsonl');
    const { exec } = executor();
    await exec.run('echo', ['untraced']);
    process.env.DEBVISOR_EXEC_TRACE = file;
    try {
      await exec.run('echo', ['a b', '-n', 'ü']);
      await exec.run('missing', ['x']).catch(() => undefined);
    } finally {
      delete process.env.DEBVISOR_EXEC_TRACE;
    }
    await exec.run('echo', ['untraced']);
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as unknown);
    expect(lines).toEqual([
      { backend: 'test', command: 'echo', args: ['a b', '-n', 'ü'] },
      { backend: 'test', command: 'missing', args: ['x'] },
    ]);
  });
});

describe('concurrency limit', () => {
  it('runs one at a time with maxConcurrent 1', async () => {
    const { exec } = executor({ maxConcurrent: 1 });
    let maxRunning = 0;
    const poll = setInterval(() => (maxRunning = Math.max(maxRunning, exec.stats.running)), 10);
    const t0 = performance.now();
    const results = await Promise.all([0, 1, 2].map(() => exec.run('sleep', ['0.3'])));
    const elapsed = performance.now() - t0;
    clearInterval(poll);
    expect(results.map((r) => r.code)).toEqual([0, 0, 0]);
    expect(elapsed).toBeGreaterThanOrEqual(900);
    expect(maxRunning).toBe(1);
  });

  it('queued calls honour their signal while waiting', async () => {
    const { exec, spawns } = executor({ maxConcurrent: 1 });
    const first = exec.run('sleep', ['0.5']);
    const controller = new AbortController();
    const queued = exec.run('echo', ['queued'], { signal: controller.signal });
    await new Promise((r) => setTimeout(r, 50));
    expect(exec.stats).toMatchObject({ running: 1, queued: 1 });
    const t0 = performance.now();
    controller.abort();
    await expect(queued).rejects.toMatchObject({ kind: 'cancelled', command: 'echo' });
    expect(performance.now() - t0).toBeLessThan(200);
    expect(exec.stats.queued).toBe(0);
    await first;
    expect(spawns.map((s) => s.command)).toEqual(['sleep']);
    // The slot is free again.
    await expect(exec.run('echo', ['after'])).resolves.toMatchObject({ stdout: 'after\n' });
  });
});

describe('typed errors', () => {
  async function connectionErrors(registry: Registry): Promise<number> {
    const m = await registry.getSingleMetric('backend_connection_errors_total')!.get();
    return m.values.find((v) => v.labels.backend_service === 'test')?.value ?? 0;
  }

  it('a missing or non-executable binary is unavailable and counted', async () => {
    const { exec, registry } = executor();
    expect(await connectionErrors(registry)).toBe(0);
    const err = await caught(exec.run('missing', ['--version']));
    expect(err).toBeInstanceOf(ExecError);
    expect(err).toMatchObject({ kind: 'unavailable', command: 'missing', exitCode: null });
    expect(await connectionErrors(registry)).toBe(1);
    await expect(exec.run('notExecutable', [])).rejects.toMatchObject({ kind: 'unavailable' });
    expect(await connectionErrors(registry)).toBe(2);
    const st = toStatus(err, 't');
    expect(st.code).toBe(Status.UNAVAILABLE);
    expect(st.details).toContain('the test backend is unavailable');
    expect(st.details).not.toContain('nonexistent');
    expect(exec.stats.running).toBe(0);
  });

  it('classify maps tool output to kinds; clients never see stderr', async () => {
    const { exec, registry } = executor();
    const rules = [
      { kind: 'not_found' as const, stderr: /failed to get domain/, message: 'VM not found' },
      { kind: 'exists' as const, code: 5 },
      { kind: 'busy' as const, stderr: /device or resource busy/i },
      { kind: 'unavailable' as const, stderr: /failed to connect to the hypervisor/ },
    ];
    const run = (script: string) => exec.run('sh', ['-c', script]);

    const notFound = await run("echo \"error: failed to get domain 'secret-vm'\" >&2; exit 1");
    const e1 = classify(notFound, rules, 'test');
    expect(e1).toMatchObject({ kind: 'not_found', exitCode: 1, command: 'sh' });
    expect(e1!.stderr).toContain('secret-vm');
    const st1 = toStatus(e1, 't');
    expect(st1.code).toBe(Status.NOT_FOUND);
    expect(st1.details).toBe('VM not found (trace_id=t)');

    expect(toStatus(classify(await run('exit 5'), rules), 't').code).toBe(Status.ALREADY_EXISTS);
    const busy = classify(await run('echo "Device or resource busy" >&2; exit 2'), rules);
    expect(toStatus(busy, 't').code).toBe(Status.ABORTED);
    expect(toStatus(busy, 't').details).not.toContain('Device');

    const other = classify(await run('echo "segfault at secret-address" >&2; exit 139'), rules);
    expect(other).toMatchObject({ kind: 'failed', exitCode: 139 });
    const st = toStatus(other, 't');
    expect(st.code).toBe(Status.INTERNAL);
    expect(st.details).not.toContain('secret');

    expect(classify(await run('echo fine'), rules)).toBeUndefined();
    // check() throws the classification and counts an unreachable service.
    const down = await run('echo "error: failed to connect to the hypervisor" >&2; exit 1');
    expect(() => exec.check(down, rules)).toThrow(ExecError);
    expect(await connectionErrors(registry)).toBe(1);
    expect(toStatus(caughtSync(() => exec.check(down, rules)), 't').code).toBe(Status.UNAVAILABLE);
    const ok: ExecResult = exec.check(await run('true'));
    expect(ok.code).toBe(0);
  });

  it('stateful (g) patterns classify the same every time', async () => {
    const { exec } = executor();
    const r = await exec.run('sh', ['-c', 'echo "No such file" >&2; exit 1']);
    const rules = [{ kind: 'not_found' as const, stderr: /no such/gi }];
    expect(classify(r, rules)?.kind).toBe('not_found');
    expect(classify(r, rules)?.kind).toBe('not_found');
  });
});

function caughtSync(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected a throw');
}

describe('metrics', () => {
  it('registers once per registry and records results', async () => {
    const registry = new Registry();
    const a = executor({ registry, backend: 'lvm' }).exec;
    const b = executor({ registry, backend: 'rbd' }).exec;
    await a.run('echo', ['x']);
    await b.run('sh', ['-c', 'exit 1']);
    const text = await registry.metrics();
    expect(text).toMatch(/backend_command_duration_seconds_count\{backend_service="lvm",command="echo",result="ok"\} 1/);
    expect(text).toMatch(/backend_command_duration_seconds_count\{backend_service="rbd",command="sh",result="error"\} 1/);
    expect(text).toContain('# TYPE backend_connection_errors_total counter');
  });
});
