// The RBD backend against a REAL single-node Ceph (one mon, one memstore OSD; test/support/ceph.ts):
// volumes, ownership and tags in image-meta, snapshots, protect/unprotect, clone and flatten with
// progress from rbd's stderr, error classification and its gRPC codes, and names refused before
// any spawn. One cluster for the file; each test gets its own pool.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecError } from '../../src/backends/exec.js';
import { RbdBackend, type RbdBackendOptions } from '../../src/backends/rbd/rbd.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';
import { RBD, startCeph, type TestCeph } from '../support/ceph.js';
import { freePort } from '../support/ports.js';

const execFileAsync = promisify(execFile);
const MiB = 1024n * 1024n;
const QEMU_RBD_MODULE = '/usr/lib/x86_64-linux-gnu/qemu/block-rbd.so';

let ceph: TestCeph | undefined;
let poolCount = 0;
/** Pools made ahead, all at once: one `ceph osd pool create` takes ~0.5 s, most of it the CLI starting. */
const sparePools: string[] = [];
const SPARE_POOLS = 8;

beforeAll(async () => {
  const started = await startCeph();
  ceph = started;
  const names = Array.from({ length: SPARE_POOLS }, () => `t${++poolCount}`);
  await Promise.all(names.map((name) => started.createPool(name)));
  sparePools.push(...names);
});

afterAll(async () => {
  await ceph?.stop();
});

function cluster(): TestCeph {
  if (!ceph) throw new Error('Ceph did not start');
  return ceph;
}

/** A fresh pool and a backend allowed to use it (and nothing else). */
async function freshBackend(overrides: Partial<RbdBackendOptions> = {}): Promise<{ rbd: RbdBackend; pool: string }> {
  let pool = sparePools.shift();
  if (pool === undefined) {
    pool = `t${++poolCount}`;
    await cluster().createPool(pool);
  }
  const rbd = new RbdBackend({
    rbdPath: RBD,
    cephConf: cluster().conf,
    pools: [pool],
    maxConcurrent: 4,
    defaultTimeoutMs: 30_000,
    registry: new Registry(),
    ...overrides,
  });
  return { rbd, pool };
}

/** The rbd CLI directly, to set up what the backend does not do itself (write data, foreign metadata). */
async function rbdCli(...args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(RBD, ['--conf', cluster().conf, ...args], { env: { PATH: '/usr/bin:/bin', TZ: 'UTC' } });
  return stdout;
}

/** The ExecError kind and the gRPC code src/rpc/errors.ts gives it. */
async function failure(p: Promise<unknown>): Promise<{ kind: string; code: Status }> {
  const err = await p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: unknown) => e,
  );
  if (!(err instanceof ExecError)) throw err;
  return { kind: err.kind, code: toStatus(err, 't').code };
}

describe('RbdBackend volumes', () => {
  it('creates a volume with exact size, owner and tags in image-meta; gets and lists it with used bytes', async () => {
    const { rbd, pool } = await freshBackend();
    const before = Date.now() - 2000;
    const tags = { env: 'ci', team: '-x', flag: '' };
    const created = await rbd.createVolume({ pool, name: 'disk1', sizeBytes: 64n * MiB + 512n, tags, owner: 'user:alice' });
    expect(created).toMatchObject({ backend: 'rbd', pool, name: 'disk1', sizeBytes: 64n * MiB + 512n, usedBytes: 0n, owner: 'user:alice', tags });
    expect(created.parent).toBeUndefined();
    expect(created.createTime?.getTime()).toBeGreaterThan(before);
    expect(created.createTime?.getTime()).toBeLessThan(Date.now() + 2000);
    // The bookkeeping is really in the image's metadata.
    expect(JSON.parse(await rbdCli('image-meta', 'list', `${pool}/disk1`, '--format', 'json'))).toEqual({
      'debvisor.owner': 'user:alice',
      'debvisor.tag.env': 'ci',
      'debvisor.tag.team': '-x',
      // rbd refuses empty values.
      'debvisor.tag-empty.flag': '1',
    });

    await rbdCli('bench', '--io-type', 'write', '--io-size', '4M', '--io-total', '8M', `${pool}/disk1`);
    await rbdCli('create', `${pool}/foreign`, '--size', '4');
    // Made outside DebVisor with a name it refuses (":" separates qemu options): not addressable, not listed.
    await rbdCli('create', `${pool}/odd:name`, '--size', '4');
    expect((await rbd.getVolume(pool, 'disk1')).usedBytes).toBe(8n * MiB);
    const listed = await rbd.listVolumes(pool);
    expect(listed.map((v) => [v.name, v.sizeBytes, v.usedBytes, v.owner])).toEqual([
      ['disk1', 64n * MiB + 512n, 8n * MiB, 'user:alice'],
      ['foreign', 4n * MiB, 0n, ''],
    ]);
    expect(listed[1]?.tags).toEqual({});
  });

  it('refuses a duplicate (exists), reports a missing image (not_found) and maps both to gRPC codes', async () => {
    const { rbd, pool } = await freshBackend();
    await rbd.createVolume({ pool, name: 'dup', sizeBytes: 4n * MiB, tags: {}, owner: 'a' });
    expect(await failure(rbd.createVolume({ pool, name: 'dup', sizeBytes: 4n * MiB, tags: {}, owner: 'b' }))).toEqual({ kind: 'exists', code: Status.ALREADY_EXISTS });
    // The failed create did not overwrite the first one's owner.
    expect((await rbd.getVolume(pool, 'dup')).owner).toBe('a');
    expect(await failure(rbd.getVolume(pool, 'nope'))).toEqual({ kind: 'not_found', code: Status.NOT_FOUND });
    expect(await failure(rbd.deleteVolume(pool, 'nope'))).toEqual({ kind: 'not_found', code: Status.NOT_FOUND });
    expect(await failure(rbd.listSnapshots(pool, 'nope'))).toEqual({ kind: 'not_found', code: Status.NOT_FOUND });
  });

  it('grows, refuses to shrink without shrink, shrinks with it', async () => {
    const { rbd, pool } = await freshBackend();
    await rbd.createVolume({ pool, name: 'r', sizeBytes: 8n * MiB, tags: {}, owner: 'a' });
    expect((await rbd.resizeVolume(pool, 'r', 32n * MiB, { shrink: false })).sizeBytes).toBe(32n * MiB);
    // The same size again (a retried request): a no-op, not rbd's exit 22 "new size is equal to original size".
    expect((await rbd.resizeVolume(pool, 'r', 32n * MiB, { shrink: false })).sizeBytes).toBe(32n * MiB);
    expect((await failure(rbd.resizeVolume(pool, 'r', 16n * MiB, { shrink: false }))).kind).toBe('failed');
    expect((await rbd.resizeVolume(pool, 'r', 16n * MiB, { shrink: true })).sizeBytes).toBe(16n * MiB);
  });

  it('deletes with progress from rbd stderr', async () => {
    const { rbd, pool } = await freshBackend();
    await rbd.createVolume({ pool, name: 'big', sizeBytes: 200n * MiB, tags: {}, owner: 'a' });
    const progress: number[] = [];
    await rbd.deleteVolume(pool, 'big', { onProgress: (p) => progress.push(p) });
    expect(progress.length).toBeGreaterThan(3);
    expect(progress).toEqual([...progress].sort((a, b) => a - b));
    expect(progress.at(-1)).toBe(100);
    expect(await rbd.listVolumes(pool)).toEqual([]);
  });
});

describe('RbdBackend snapshots', () => {
  it('creates, lists (label, owner, time, size, protected, clones) and deletes snapshots, cleaning their metadata', async () => {
    const { rbd, pool } = await freshBackend();
    await rbd.createVolume({ pool, name: 'v', sizeBytes: 16n * MiB, tags: { k: 'v' }, owner: 'alice' });
    await rbdCli('bench', '--io-type', 'write', '--io-size', '4M', '--io-total', '4M', `${pool}/v`);
    const before = Date.now() - 2000;
    const s1 = await rbd.createSnapshot({ pool, volume: 'v', name: 'before-run', label: 'nightly', owner: 'bob' });
    expect(s1).toMatchObject({ pool, volume: 'v', name: 'before-run', label: 'nightly', owner: 'bob', protected: false, clones: [], sizeBytes: 4n * MiB });
    expect(s1.createTime?.getTime()).toBeGreaterThan(before);
    await rbd.createSnapshot({ pool, volume: 'v', name: 'a.b', label: '', owner: 'carol' });
    expect(await failure(rbd.createSnapshot({ pool, volume: 'v', name: 'a.b', label: 'x', owner: 'mallory' }))).toEqual({ kind: 'exists', code: Status.ALREADY_EXISTS });

    const listed = await rbd.listSnapshots(pool, 'v');
    expect(listed.map((s) => [s.name, s.label, s.owner])).toEqual([
      ['before-run', 'nightly', 'bob'],
      ['a.b', '', 'carol'],
    ]);
    // Snapshot bookkeeping is not a volume tag.
    expect((await rbd.getVolume(pool, 'v')).tags).toEqual({ k: 'v' });

    // debvisor.snap.<name>.time overrides rbd's timestamp (imported or backdated snapshots).
    await rbdCli('image-meta', 'set', `${pool}/v`, 'debvisor.snap.a.b.time', '2020-01-02T03:04:05Z');
    expect((await rbd.listSnapshots(pool, 'v')).find((s) => s.name === 'a.b')?.createTime).toEqual(new Date('2020-01-02T03:04:05Z'));

    await rbd.deleteSnapshot(pool, 'v', 'a.b');
    expect((await rbd.listSnapshots(pool, 'v')).map((s) => s.name)).toEqual(['before-run']);
    const meta = JSON.parse(await rbdCli('image-meta', 'list', `${pool}/v`, '--format', 'json')) as Record<string, string>;
    expect(Object.keys(meta).sort()).toEqual(['debvisor.owner', 'debvisor.snap.before-run.label', 'debvisor.snap.before-run.owner', 'debvisor.tag.k']);
    expect(await failure(rbd.deleteSnapshot(pool, 'v', 'a.b'))).toEqual({ kind: 'not_found', code: Status.NOT_FOUND });
    await expect(rbd.deleteSnapshot(pool, 'v', 'a.b')).rejects.toMatchObject({ publicMessage: 'the RBD snapshot does not exist' });

    // Keys an earlier snapshot of the same name left behind (removed outside DebVisor) do not stick to a new one.
    await rbd.createSnapshot({ pool, volume: 'v', name: 'reused', label: 'old', owner: 'old-owner' });
    await rbdCli('image-meta', 'set', `${pool}/v`, 'debvisor.snap.reused.time', '2020-01-02T03:04:05Z');
    await rbdCli('snap', 'rm', `${pool}/v@reused`);
    const reused = await rbd.createSnapshot({ pool, volume: 'v', name: 'reused', label: '', owner: 'new-owner' });
    expect(reused).toMatchObject({ label: '', owner: 'new-owner' });
    expect(reused.createTime?.getTime()).toBeGreaterThan(before);
    await rbd.deleteSnapshot(pool, 'v', 'reused');

    // A volume with snapshots is not deleted.
    expect(await failure(rbd.deleteVolume(pool, 'v'))).toEqual({ kind: 'busy', code: Status.ABORTED });
    await rbd.deleteSnapshot(pool, 'v', 'before-run');
    await rbd.deleteVolume(pool, 'v');
  });
});

describe('RbdBackend templates and clones', () => {
  it('protects, clones, refuses what would break the clone, flattens with progress, then lets go', async () => {
    const { rbd, pool } = await freshBackend();
    await rbd.createVolume({ pool, name: 'tmpl', sizeBytes: 100n * MiB, tags: { os: 'debian' }, owner: 'admin' });
    await rbdCli('bench', '--io-type', 'write', '--io-size', '4M', '--io-total', '8M', `${pool}/tmpl`);
    await rbd.createSnapshot({ pool, volume: 'tmpl', name: 'gold', label: 'template', owner: 'admin' });

    // Clone format 1 (this cluster's default) needs a protected parent snapshot.
    expect(await failure(rbd.clone({ pool, image: 'tmpl', snapshot: 'gold' }, { pool, image: 'early', owner: 'ci' }))).toEqual({
      kind: 'unsupported',
      code: Status.FAILED_PRECONDITION,
    });
    await rbd.protectSnapshot(pool, 'tmpl', 'gold');
    await rbd.protectSnapshot(pool, 'tmpl', 'gold'); // idempotent
    expect((await rbd.listSnapshots(pool, 'tmpl'))[0]?.protected).toBe(true);
    expect(await failure(rbd.deleteSnapshot(pool, 'tmpl', 'gold'))).toEqual({ kind: 'busy', code: Status.ABORTED });

    const clone = await rbd.clone({ pool, image: 'tmpl', snapshot: 'gold' }, { pool, image: 'vm1-disk', owner: 'ci' });
    // rbd copies the parent's image-meta into the clone: the clone has its own owner, no inherited tags or snapshot keys.
    expect(clone).toMatchObject({ name: 'vm1-disk', sizeBytes: 100n * MiB, owner: 'ci', tags: {}, parent: `${pool}/tmpl@gold` });
    expect(Object.keys(JSON.parse(await rbdCli('image-meta', 'list', `${pool}/vm1-disk`, '--format', 'json')) as object)).toEqual(['debvisor.owner']);
    await rbd.createSnapshot({ pool, volume: 'tmpl', name: 'plain', label: '', owner: 'admin' });
    expect((await rbd.listSnapshots(pool, 'tmpl')).map((s) => [s.name, s.clones])).toEqual([
      ['gold', [`${pool}/vm1-disk`]],
      ['plain', []],
    ]);
    expect(await failure(rbd.clone({ pool, image: 'tmpl', snapshot: 'gold' }, { pool, image: 'vm1-disk', owner: 'ci' }))).toEqual({
      kind: 'exists',
      code: Status.ALREADY_EXISTS,
    });
    expect(await failure(rbd.clone({ pool, image: 'tmpl', snapshot: 'nope' }, { pool, image: 'x', owner: 'ci' }))).toMatchObject({ kind: 'not_found' });

    await expect(rbd.unprotectSnapshot(pool, 'tmpl', 'gold')).rejects.toMatchObject({
      name: 'ExecError',
      kind: 'busy',
      publicMessage: 'the snapshot has clones; flatten or delete them first',
    });

    const progress: number[] = [];
    await rbd.flatten(pool, 'vm1-disk', { onProgress: (p) => progress.push(p) });
    expect(progress.length).toBeGreaterThan(3);
    expect(progress.at(-1)).toBe(100);
    const flat = await rbd.getVolume(pool, 'vm1-disk');
    expect(flat.parent).toBeUndefined();
    expect(flat.usedBytes).toBe(8n * MiB);
    await rbd.flatten(pool, 'vm1-disk'); // idempotent

    expect((await rbd.listSnapshots(pool, 'tmpl'))[0]?.clones).toEqual([]);
    await rbd.unprotectSnapshot(pool, 'tmpl', 'gold');
    await rbd.unprotectSnapshot(pool, 'tmpl', 'gold'); // idempotent
    await rbd.deleteSnapshot(pool, 'tmpl', 'gold');
    await rbd.deleteSnapshot(pool, 'tmpl', 'plain');
    await rbd.deleteVolume(pool, 'tmpl');
  });

  it('gives a clone its own tags (CreateVm tags it with its operation), none of the parent\'s', async () => {
    const { rbd, pool } = await freshBackend();
    await rbd.createVolume({ pool, name: 'tmpl2', sizeBytes: 8n * MiB, tags: { os: 'debian' }, owner: 'admin' });
    await rbd.createSnapshot({ pool, volume: 'tmpl2', name: 'gold', label: '', owner: 'admin' });
    await rbd.protectSnapshot(pool, 'tmpl2', 'gold');
    const clone = await rbd.clone({ pool, image: 'tmpl2', snapshot: 'gold' }, { pool, image: 'vm2-disk', owner: 'ci', tags: { vm: 'vm2', 'debvisor.operation': 'op-1' } });
    expect(clone).toMatchObject({ owner: 'ci', tags: { vm: 'vm2', 'debvisor.operation': 'op-1' } });
    await rbd.deleteVolume(pool, 'vm2-disk');
    await rbd.unprotectSnapshot(pool, 'tmpl2', 'gold');
    await rbd.deleteSnapshot(pool, 'tmpl2', 'gold');
    await rbd.deleteVolume(pool, 'tmpl2');
  });
});

describe('RbdBackend ownership (RecomputeQuota)', () => {
  it('reads owners and sizes of every image and owners of their snapshots in one process, however many images', async () => {
    const spawned: string[] = [];
    const { rbd, pool } = await freshBackend({ onSpawn: (event) => spawned.push(event.command) });
    for (const [name, owner] of [['a1', 'alice'], ['a2', 'alice'], ['b1', 'bob'], ['none', '']] as const) {
      await rbd.createVolume({ pool, name, sizeBytes: 8n * MiB, tags: {}, owner });
    }
    await rbd.createSnapshot({ pool, volume: 'a1', name: 's1', label: '', owner: 'alice' });
    await rbd.createSnapshot({ pool, volume: 'a1', name: 's2', label: 'l', owner: 'bob' });
    await rbd.createSnapshot({ pool, volume: 'b1', name: 's1', label: '', owner: 'bob' });
    // Made outside DebVisor: a snapshot without an owner key.
    await rbdCli('snap', 'create', `${pool}/none@foreign`);

    spawned.length = 0;
    const owned = await rbd.ownership(pool);
    expect(spawned).toEqual(['python3']);
    expect(owned.volumes.map((v) => [v.owner, v.sizeBytes]).sort()).toEqual([
      ['', 8n * MiB],
      ['alice', 8n * MiB],
      ['alice', 8n * MiB],
      ['bob', 8n * MiB],
    ]);
    expect(owned.snapshotOwners.sort()).toEqual(['', 'alice', 'bob', 'bob']);
  });

  it('is FAILED_PRECONDITION, naming python3-rbd, when the python has no librbd bindings', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'debvisor-rbd-python-'));
    try {
      // -S: without site, Debian's dist-packages (python3-rbd) are not on the path, as on a host without the package.
      const python = join(dir, 'python3');
      writeFileSync(python, '#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n', { mode: 0o755 });
      const { rbd, pool } = await freshBackend({ pythonPath: python });
      const err = await rbd.ownership(pool).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(ExecError);
      expect((err as ExecError).kind).toBe('unsupported');
      const status = toStatus(err, 't');
      expect(status.code).toBe(Status.FAILED_PRECONDITION);
      expect(status.details).toContain('python3-rbd');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a pool that does not exist as not_found', async () => {
    const { rbd } = await freshBackend({ pools: ['no-such-pool'] });
    expect(await failure(rbd.ownership('no-such-pool'))).toEqual({ kind: 'not_found', code: Status.NOT_FOUND });
  });
});

describe('RbdBackend refusals and an unreachable cluster', () => {
  it('refuses pools outside its list and invalid names before anything runs', async () => {
    let spawned = 0;
    const rbd = new RbdBackend({ rbdPath: RBD, cephConf: cluster().conf, pools: ['allowed'], maxConcurrent: 1, defaultTimeoutMs: 5000, onSpawn: () => spawned++ });
    const attempts: Promise<unknown>[] = [
      rbd.listVolumes('other'),
      rbd.getVolume('allowed', '--help'),
      rbd.getVolume('allowed', 'a/b'),
      rbd.createVolume({ pool: 'allowed', name: 'x@y', sizeBytes: 1n, tags: {}, owner: '' }),
      rbd.createVolume({ pool: 'allowed', name: 'x', sizeBytes: 0n, tags: {}, owner: '' }),
      rbd.createSnapshot({ pool: 'allowed', volume: 'x', name: 'a:b', label: '', owner: '' }),
      rbd.clone({ pool: 'allowed', image: 'x', snapshot: 's' }, { pool: 'other', image: 'y', owner: '' }),
      rbd.flatten('allowed', '..'),
    ];
    for (const attempt of attempts) await expect(attempt).rejects.toBeInstanceOf(InvalidArgumentError);
    expect(() => rbd.imageTarget('other', 'x')).toThrow(InvalidArgumentError);
    expect(spawned).toBe(0);
  });

  it('reports a stuck OSD as unavailable within the cluster timeout', async () => {
    const { rbd: healthy, pool } = await freshBackend();
    await healthy.createVolume({ pool, name: 'v', sizeBytes: 4n * MiB, tags: {}, owner: 'a' });
    const rbd = new RbdBackend({ rbdPath: RBD, cephConf: cluster().conf, pools: [pool], maxConcurrent: 1, defaultTimeoutMs: 20_000, clusterTimeoutMs: 1000 });
    const osd = Number(readFileSync(join(cluster().dir, 'run', 'osd.0.bgpid'), 'utf8'));
    process.kill(osd, 'SIGSTOP');
    try {
      const started = Date.now();
      expect(await failure(rbd.getVolume(pool, 'v'))).toEqual({ kind: 'unavailable', code: Status.UNAVAILABLE });
      expect(Date.now() - started).toBeLessThan(10_000);
    } finally {
      process.kill(osd, 'SIGCONT');
    }
    expect((await healthy.getVolume(pool, 'v')).name).toBe('v');
  });

  describe('a cluster nobody answers for', () => {
    let dir = '';
    let conf = '';
    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'debvisor-rbd-bad-'));
      conf = join(dir, 'ceph.conf');
      writeFileSync(conf, `[global]\nmon host = v2:127.0.0.1:${await freePort()}\nauth client required = none\n`);
    });
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const backend = (options: Partial<RbdBackendOptions>) =>
      new RbdBackend({ rbdPath: RBD, cephConf: conf, pools: ['rbd'], maxConcurrent: 1, defaultTimeoutMs: 20_000, killGraceMs: 200, ...options });

    it('is unavailable (UNAVAILABLE) within the cluster timeout, as is a missing ceph.conf', async () => {
      const started = Date.now();
      expect(await failure(backend({ clusterTimeoutMs: 1000 }).listVolumes('rbd'))).toEqual({ kind: 'unavailable', code: Status.UNAVAILABLE });
      expect(await failure(backend({ clusterTimeoutMs: 1000 }).ownership('rbd'))).toEqual({ kind: 'unavailable', code: Status.UNAVAILABLE });
      expect(Date.now() - started).toBeLessThan(10_000);
      expect((await failure(backend({ cephConf: join(dir, 'missing.conf') }).getVolume('rbd', 'x'))).kind).toBe('unavailable');
    });

    it('is a timeout (DEADLINE_EXCEEDED) when the command limit comes first', async () => {
      expect(await failure(backend({ clusterTimeoutMs: 30_000, defaultTimeoutMs: 500 }).getVolume('rbd', 'x'))).toEqual({ kind: 'timeout', code: Status.DEADLINE_EXCEEDED });
    });

    it('kills a running rbd when the call is cancelled', async () => {
      const controller = new AbortController();
      const rbd = backend({ clusterTimeoutMs: 30_000, onSpawn: () => setTimeout(() => controller.abort(), 200) });
      const started = Date.now();
      expect(await failure(rbd.deleteVolume('rbd', 'x', { signal: controller.signal }))).toEqual({ kind: 'cancelled', code: Status.CANCELLED });
      expect(Date.now() - started).toBeLessThan(5_000);
    });
  });
});

describe('RbdBackend imageTarget', () => {
  it('names the image for qemu with conf, id and keyring, escaping qemu option separators', () => {
    const rbd = new RbdBackend({ cephConf: '/etc/ceph/a:b\\c.conf', id: 'debvisor', keyring: '/etc/ceph/k', pools: ['p'], maxConcurrent: 1, defaultTimeoutMs: 1000 });
    expect(rbd.imageTarget('p', 'img')).toBe('rbd:p/img:conf=/etc/ceph/a\\:b\\\\c.conf:id=debvisor:keyring=/etc/ceph/k');
  });

  it('is a target qemu-img really writes into', async () => {
    // Debian's qemu-img loads rbd: support from a module in qemu-block-extra.
    expect(existsSync(QEMU_RBD_MODULE), `${QEMU_RBD_MODULE} is missing: apt-get install -y --no-install-recommends qemu-block-extra`).toBe(true);
    const { rbd, pool } = await freshBackend();
    await rbd.createVolume({ pool, name: 'prov', sizeBytes: 8n * MiB, tags: {}, owner: 'a' });
    const dir = mkdtempSync(join(tmpdir(), 'debvisor-rbd-img-'));
    try {
      const source = join(dir, 'src.raw');
      writeFileSync(source, Buffer.alloc(4 * 1024 * 1024, 0xab));
      await execFileAsync('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, rbd.imageTarget(pool, 'prov')]);
      const out = join(dir, 'out.raw');
      await rbdCli('export', `${pool}/prov`, out);
      const { stdout } = await execFileAsync('cmp', ['-n', String(4 * 1024 * 1024), source, out]).catch((err: unknown) => ({ stdout: String(err) }));
      expect(stdout).toBe('');
      expect((await rbd.getVolume(pool, 'prov')).usedBytes).toBe(4n * MiB);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
