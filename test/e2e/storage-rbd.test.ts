// StorageService on RBD end to end: the REAL daemon's RPCs against a REAL single-node Ceph
// (test/support/ceph.ts; one cluster for the file, a pool per area). Volumes, snapshots,
// per-item deletes, prune with a real policy over backdated snapshots, templates, clone and
// flatten, quotas (refusal, release to the owner, recount), scoped keys, ownership and audit.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { OperationKind, OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { QuotaResource, ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { RBD, startCeph, type TestCeph } from '../support/ceph.js';
import { ctlOn } from '../support/ctl.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { defineTestDomain, startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { auditRecord, issueClientFor, rejection } from '../support/security.js';
import { finished, GIB, MIB, NO_RATE_LIMITS, snapshotsUsed, storageGb, T, type Client } from '../support/storage.js';

const run = promisify(execFile);
const ADMIN = 'spiffe://debvisor/admin/admin';
const OPERATOR = 'spiffe://debvisor/storage-test/operator';
const POOLS = ['ci-pool', 'tpl-pool', 'prune-pool', 'prod-pool'];
const RBD_ = StorageBackend.RBD;

let ceph: TestCeph;
let libvirt: TestLibvirt;
let daemon: RunningDaemon;
let storage: Client<typeof StorageService>;
let access: Client<typeof AccessService>;
let ops: Client<typeof OperationService>;
let operatorStorage: Client<typeof StorageService>;
const closers: { close(): void }[] = [];

async function rbd(...args: string[]): Promise<string> {
  return (await run(RBD, ['--conf', ceph.conf, ...args], { env: { PATH: '/usr/bin:/bin', LC_ALL: 'C' } })).stdout;
}

const ref = (pool: string, name: string) => ({ backend: RBD_, pool, name });

beforeAll(async () => {
  [ceph, libvirt] = await Promise.all([startCeph({ pools: POOLS }), startLibvirt()]);
  daemon = await startDaemon({
    env: { DEBVISOR_RPCD_RBD_CEPH_CONF: ceph.conf, DEBVISOR_RPCD_RBD_POOLS: POOLS.join(','), DEBVISOR_RPCD_LIBVIRT_URI: libvirt.uri },
    config: NO_RATE_LIMITS,
  });
  storage = await clientFor(StorageService, daemon);
  access = await clientFor(AccessService, daemon);
  ops = await clientFor(OperationService, daemon);
  await access.bindRole({ principal: OPERATOR, roleName: 'operator' }, T);
  operatorStorage = await clientFor(StorageService, daemon, await issueClientFor(daemon.pki, OPERATOR));
  closers.push(storage, access, ops, operatorStorage);
});

afterAll(async () => {
  for (const c of closers) c.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await Promise.all([(ceph as TestCeph | undefined)?.stop(), (libvirt as TestLibvirt | undefined)?.stop()]);
});

describe('RBD volumes', () => {
  it('creates, lists (paged, filtered), resizes and deletes, recording the owner and tags, with storage_gb in step', async () => {
    const before = await storageGb(access);
    const { volume } = await storage.createVolume({ volume: ref('ci-pool', 'vol-a'), sizeBytes: 2n * GIB, tags: { team: 'ci' } }, T);
    expect(volume).toMatchObject({ ref: { backend: RBD_, pool: 'ci-pool', name: 'vol-a' }, sizeBytes: 2n * GIB, owner: ADMIN, tags: { team: 'ci' } });
    expect((await rbd('image-meta', 'get', 'ci-pool/vol-a', 'debvisor.owner')).trim()).toBe(ADMIN);
    expect(await storageGb(access)).toBe(before + 2n);
    await storage.createVolume({ volume: ref('ci-pool', 'vol-b'), sizeBytes: 100n * MIB }, T);
    await storage.createVolume({ volume: ref('tpl-pool', 'other'), sizeBytes: 100n * MIB }, T);
    expect(await storageGb(access)).toBe(before + 4n);

    const all = await storage.listVolumes({ backend: RBD_ }, T);
    expect(all.volumes.map((v) => `${v.ref?.pool}/${v.ref?.name}`)).toEqual(['ci-pool/vol-a', 'ci-pool/vol-b', 'tpl-pool/other']);
    const first = await storage.listVolumes({ pageSize: 2 }, T);
    expect(first.volumes).toHaveLength(2);
    const second = await storage.listVolumes({ pageSize: 2, pageToken: first.nextPageToken }, T);
    expect(second.volumes.map((v) => v.ref?.name)).toEqual(['other']);
    expect(second.nextPageToken).toBe('');
    expect((await storage.listVolumes({ pool: 'ci-pool', nameGlob: '*-b' }, T)).volumes.map((v) => v.ref?.name)).toEqual(['vol-b']);

    // Grow: only the growth stays counted.
    const grown = await storage.resizeVolume({ volume: ref('ci-pool', 'vol-a'), newSizeBytes: 3n * GIB }, T);
    // The same size again is a no-op that answers OK (it was INTERNAL: rbd exits 22 for it).
    expect((await storage.resizeVolume({ volume: ref('ci-pool', 'vol-a'), newSizeBytes: 3n * GIB }, T)).volume?.sizeBytes).toBe(3n * GIB);
    expect(grown.volume?.sizeBytes).toBe(3n * GIB);
    expect(await storageGb(access)).toBe(before + 5n);
    const shrink = await rejection(storage.resizeVolume({ volume: ref('ci-pool', 'vol-a'), newSizeBytes: GIB }, T));
    expect(shrink.code).toBe(Status.FAILED_PRECONDITION);
    expect(shrink.details).toContain('allow_shrink');
    expect(await storageGb(access)).toBe(before + 5n);
    expect((await storage.resizeVolume({ volume: ref('ci-pool', 'vol-a'), newSizeBytes: GIB, allowShrink: true }, T)).volume?.sizeBytes).toBe(GIB);
    expect(await storageGb(access)).toBe(before + 3n);

    // The audit record names the volume, not only the pool.
    await auditRecord(daemon, (r) => r.type === 'CALL' && String(r.method).endsWith('/CreateVolume') && r.object === 'pool:ci-pool/vol-a' && r.code === 'OK');

    for (const [pool, name] of [['ci-pool', 'vol-a'], ['ci-pool', 'vol-b'], ['tpl-pool', 'other']] as const) {
      expect((await storage.deleteVolume({ volume: ref(pool, name) }, T)).deletedSnapshots).toEqual([]);
    }
    expect(await storageGb(access)).toBe(before);
    expect((await storage.listVolumes({ backend: RBD_ }, T)).volumes).toEqual([]);
  });

  it('answers bad input with INVALID_ARGUMENT naming the field, and unknown volumes with NOT_FOUND', async () => {
    const cases: [() => Promise<unknown>, string][] = [
      [() => storage.createVolume({ volume: { backend: StorageBackend.UNSPECIFIED, pool: 'ci-pool', name: 'x' }, sizeBytes: GIB }, T), 'volume.backend'],
      [() => storage.createVolume({ volume: ref('nope-pool', 'x'), sizeBytes: GIB }, T), 'volume.pool'],
      [() => storage.createVolume({ volume: ref('ci-pool', 'a/b') , sizeBytes: GIB }, T), 'volume.name'],
      [() => storage.createVolume({ volume: ref('ci-pool', '-x'), sizeBytes: GIB }, T), 'volume.name'],
      [() => storage.createVolume({ volume: ref('ci-pool', 'x'), sizeBytes: 0n }, T), 'size_bytes'],
      [() => storage.createVolume({ volume: ref('ci-pool', 'x'), sizeBytes: GIB, tags: { 'debvisor.owner': 'me' } }, T), 'tags[debvisor.owner]'],
      [() => storage.createVolume({ sizeBytes: GIB }, T), 'volume'],
      [() => storage.createSnapshot({ dataset: ref('ci-pool', 'x'), snapshotName: 'a@b' }, T), 'snapshot_name'],
      [() => storage.listVolumes({ nameGlob: 'a b' }, T), 'name_glob'],
      [() => storage.listVolumes({ pool: 'nope' }, T), 'pool'],
      [() => storage.pruneSnapshots({ dataset: ref('ci-pool', 'x'), retention: {} }, T), 'retention'],
      [() => storage.pruneSnapshots({ dataset: ref('ci-pool', 'x') }, T), 'retention'],
      [() => storage.cloneRbdFromTemplate({ templatePool: 'tpl-pool', templateImage: 'i', templateSnapshot: 's', targetPool: 'bad pool', targetImage: 'x' }, T), 'target_pool'],
    ];
    for (const [call, field] of cases) {
      const err = await rejection(call());
      expect({ field, code: err.code }).toEqual({ field, code: Status.INVALID_ARGUMENT });
      expect(err.details.startsWith(`${field}: `)).toBe(true);
    }
    const missing = await rejection(storage.resizeVolume({ volume: ref('ci-pool', 'ghost'), newSizeBytes: GIB }, T));
    expect(missing.code).toBe(Status.NOT_FOUND);
    expect(missing.details).toContain('volume rbd:ci-pool/ghost not found');
    expect((await rejection(storage.deleteVolume({ volume: ref('ci-pool', 'ghost') }, T))).code).toBe(Status.NOT_FOUND);
    expect((await rejection(storage.listSnapshots({ dataset: ref('ci-pool', 'ghost') }, T))).code).toBe(Status.NOT_FOUND);
    const ghostSnapshot = await rejection(storage.createSnapshot({ dataset: ref('ci-pool', 'ghost'), snapshotName: 's' }, T));
    expect([ghostSnapshot.code, ghostSnapshot.details]).toEqual([Status.NOT_FOUND, expect.stringContaining('volume rbd:ci-pool/ghost not found') as unknown]);
    expect((await rejection(storage.deleteSnapshot({ dataset: ref('ci-pool', 'ghost'), snapshotNames: ['s'] }, T))).code).toBe(Status.NOT_FOUND);
    expect((await rejection(storage.createRbdTemplateSnapshot({ pool: 'ci-pool', image: 'ghost', snapshot: 's' }, T))).code).toBe(Status.NOT_FOUND);
    // Failed creates gave their quota back.
    expect(await storageGb(access)).toBe(0n);
    expect(await snapshotsUsed(access)).toBe(0n);
    expect(daemon.logs()).not.toContain('internal error in handler');
  });

  it('refuses over-quota creates with RESOURCE_EXHAUSTED and creates nothing', async () => {
    await access.setQuota({ principal: OPERATOR, resource: QuotaResource.STORAGE_GB, limit: 2n }, T);
    await access.setQuota({ principal: OPERATOR, resource: QuotaResource.SNAPSHOTS, limit: 1n }, T);
    const tooBig = await rejection(operatorStorage.createVolume({ volume: ref('ci-pool', 'big'), sizeBytes: 3n * GIB }, T));
    expect(tooBig.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(tooBig.details).toContain('quota exceeded: storage_gb limit 2');
    await expect(rbd('info', 'ci-pool/big')).rejects.toThrow();

    await operatorStorage.createVolume({ volume: ref('ci-pool', 'small'), sizeBytes: 2n * GIB }, T);
    const grow = await rejection(operatorStorage.resizeVolume({ volume: ref('ci-pool', 'small'), newSizeBytes: 3n * GIB }, T));
    expect(grow.code).toBe(Status.RESOURCE_EXHAUSTED);
    // Only the growth counts: with room for 1 GiB more, 2 → 3 GiB fits.
    await access.setQuota({ principal: OPERATOR, resource: QuotaResource.STORAGE_GB, limit: 3n }, T);
    await operatorStorage.resizeVolume({ volume: ref('ci-pool', 'small'), newSizeBytes: 3n * GIB }, T);
    expect(await storageGb(access, OPERATOR)).toBe(3n);
    await operatorStorage.resizeVolume({ volume: ref('ci-pool', 'small'), newSizeBytes: 2n * GIB, allowShrink: true }, T);
    expect(await storageGb(access, OPERATOR)).toBe(2n);
    await access.setQuota({ principal: OPERATOR, resource: QuotaResource.STORAGE_GB, limit: 2n }, T);
    await operatorStorage.createSnapshot({ dataset: ref('ci-pool', 'small'), snapshotName: 's1' }, T);
    const second = await rejection(operatorStorage.createSnapshot({ dataset: ref('ci-pool', 'small'), snapshotName: 's2' }, T));
    expect(second.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(second.details).toContain('quota exceeded: snapshots limit 1');
    expect((await storage.listSnapshots({ dataset: ref('ci-pool', 'small') }, T)).snapshots.map((s) => s.name)).toEqual(['s1']);
    expect(await storageGb(access, OPERATOR)).toBe(2n);
    expect(await snapshotsUsed(access, OPERATOR)).toBe(1n);

    // RecomputeQuota recounts both from what exists in Ceph.
    await access.setQuota({ principal: OPERATOR, resource: QuotaResource.STORAGE_GB, limit: 100n }, T);
    const recount = await access.recomputeQuota({ principal: OPERATOR }, T);
    expect(recount.notRecounted).toEqual([]);
    expect(recount.after.find((q) => q.resource === QuotaResource.STORAGE_GB)?.used).toBe(2n);
    expect(recount.after.find((q) => q.resource === QuotaResource.SNAPSHOTS)?.used).toBe(1n);

    // The admin resizes the operator's volume: the owner's count follows the size, the admin's does not move.
    const adminBefore = await storageGb(access);
    await storage.resizeVolume({ volume: ref('ci-pool', 'small'), newSizeBytes: 3n * GIB }, T);
    expect([await storageGb(access, OPERATOR), await storageGb(access)]).toEqual([3n, adminBefore]);
    await storage.resizeVolume({ volume: ref('ci-pool', 'small'), newSizeBytes: 2n * GIB, allowShrink: true }, T);
    expect([await storageGb(access, OPERATOR), await storageGb(access)]).toEqual([2n, adminBefore]);
    // The admin deletes the operator's volume: the units go back to the operator (the owner), not the admin.
    expect((await storage.deleteVolume({ volume: ref('ci-pool', 'small'), deleteSnapshots: true }, T)).deletedSnapshots).toEqual(['s1']);
    expect(await storageGb(access, OPERATOR)).toBe(0n);
    expect(await snapshotsUsed(access, OPERATOR)).toBe(0n);
    expect(await storageGb(access)).toBe(adminBefore);
  });

  it('limits a key scoped to pool ci-* to that pool, and records its owner on what it creates', async () => {
    const operatorAccess = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, OPERATOR));
    closers.push(operatorAccess);
    const key = await operatorAccess.createApiKey({ description: 'ci', permissions: ['storage:*'], resourceGlobs: [{ kind: ResourceKind.POOL, glob: 'ci-*' }] }, T);
    const keyed = await clientFor(StorageService, daemon, null);
    closers.push(keyed);
    const auth = { ...T, metadata: { authorization: `Bearer ${key.secret}` } };
    await storage.createVolume({ volume: ref('prod-pool', 'prod-db'), sizeBytes: 100n * MIB }, T);

    const made = await keyed.createVolume({ volume: ref('ci-pool', 'keyed'), sizeBytes: 100n * MIB }, auth);
    expect(made.volume?.owner).toBe(OPERATOR);
    const outside = await rejection(keyed.createVolume({ volume: ref('prod-pool', 'keyed'), sizeBytes: 100n * MIB }, auth));
    expect(outside.code).toBe(Status.PERMISSION_DENIED);
    expect(outside.details).toContain('not scoped to pool "prod-pool"');
    expect((await rejection(keyed.deleteVolume({ volume: ref('prod-pool', 'prod-db') }, auth))).code).toBe(Status.PERMISSION_DENIED);
    expect((await rejection(keyed.createSnapshot({ dataset: ref('prod-pool', 'prod-db'), snapshotName: 'x' }, auth))).code).toBe(Status.PERMISSION_DENIED);
    // Listing without a pool shows only what the key may see.
    expect((await keyed.listVolumes({}, auth)).volumes.map((v) => `${v.ref?.pool}/${v.ref?.name}`)).toEqual(['ci-pool/keyed']);
    expect((await rejection(keyed.listVolumes({ pool: 'prod-pool' }, auth))).code).toBe(Status.PERMISSION_DENIED);

    await keyed.deleteVolume({ volume: ref('ci-pool', 'keyed') }, auth);
    await storage.deleteVolume({ volume: ref('prod-pool', 'prod-db') }, T);
  });
});

describe('RBD snapshots', () => {
  it('creates and lists snapshots oldest first, deletes several with per-item results, and releases their quota', async () => {
    await storage.createVolume({ volume: ref('ci-pool', 'data'), sizeBytes: 64n * MIB }, T);
    const before = await snapshotsUsed(access);
    for (const name of ['s1', 's2', 's3']) {
      const { snapshot } = await storage.createSnapshot({ dataset: ref('ci-pool', 'data'), snapshotName: name, label: `label ${name}` }, T);
      expect(snapshot).toMatchObject({ name, label: `label ${name}`, protected: false, dataset: { pool: 'ci-pool', name: 'data' } });
      expect(snapshot?.createTime).toBeDefined();
    }
    expect(await snapshotsUsed(access)).toBe(before + 3n);
    expect((await rbd('image-meta', 'get', 'ci-pool/data', 'debvisor.snap.s2.owner')).trim()).toBe(ADMIN);
    const listed = await storage.listSnapshots({ dataset: ref('ci-pool', 'data') }, T);
    expect(listed.snapshots.map((s) => s.name)).toEqual(['s1', 's2', 's3']);
    const paged = await storage.listSnapshots({ dataset: ref('ci-pool', 'data'), pageSize: 2 }, T);
    expect(paged.snapshots).toHaveLength(2);
    expect(paged.nextPageToken).not.toBe('');
    expect((await rejection(storage.createSnapshot({ dataset: ref('ci-pool', 'data'), snapshotName: 's1' }, T))).code).toBe(Status.ALREADY_EXISTS);
    expect(await snapshotsUsed(access)).toBe(before + 3n);

    // DeleteVolume refuses while snapshots exist, naming them.
    const refused = await rejection(storage.deleteVolume({ volume: ref('ci-pool', 'data') }, T));
    expect(refused.code).toBe(Status.FAILED_PRECONDITION);
    expect(refused.details).toContain('has snapshots: s1, s2, s3');

    const { results } = await storage.deleteSnapshot({ dataset: ref('ci-pool', 'data'), snapshotNames: ['s1', 'missing', 'bad name', 's3', 's1'] }, T);
    expect(results.map((r) => [r.snapshotName, r.status?.code])).toEqual([
      ['s1', Status.OK],
      ['missing', Status.NOT_FOUND],
      ['bad name', Status.INVALID_ARGUMENT],
      ['s3', Status.OK],
      ['s1', Status.INVALID_ARGUMENT],
    ]);
    expect(results[2]?.status?.message).toContain('snapshot_names[2]');
    expect(results[4]?.status?.message).toContain('listed twice');
    expect((await storage.listSnapshots({ dataset: ref('ci-pool', 'data') }, T)).snapshots.map((s) => s.name)).toEqual(['s2']);
    expect(await snapshotsUsed(access)).toBe(before + 1n);
    await auditRecord(daemon, (r) => String(r.method).endsWith('/DeleteSnapshot') && r.object === 'pool:ci-pool/data@s1,missing,bad name,s3,s1');

    expect((await storage.deleteVolume({ volume: ref('ci-pool', 'data'), deleteSnapshots: true }, T)).deletedSnapshots).toEqual(['s2']);
    expect(await snapshotsUsed(access)).toBe(before);
  });
});

describe('RBD templates and clones', () => {
  it('snapshots and protects a template, clones it (and flattens), and protects what depends on it', async () => {
    await storage.createVolume({ volume: ref('tpl-pool', 'golden'), sizeBytes: 64n * MIB }, T);
    // Some data, so flatten has something to copy.
    await rbd('bench', '--io-type', 'write', '--io-size', '4M', '--io-total', '16M', 'tpl-pool/golden');
    // ListVolumes reports used bytes where rbd du does: the 16 MiB just written.
    expect((await storage.listVolumes({ pool: 'tpl-pool' }, T)).volumes.find((v) => v.ref?.name === 'golden')?.usedBytes).toBe(16n * MIB);
    const snapsBefore = await snapshotsUsed(access);
    const { snapshot } = await storage.createRbdTemplateSnapshot({ pool: 'tpl-pool', image: 'golden', snapshot: 'v1' }, T);
    expect(snapshot).toMatchObject({ name: 'v1', protected: true });
    expect(JSON.parse(await rbd('snap', 'ls', 'tpl-pool/golden', '--format', 'json'))).toMatchObject([{ name: 'v1', protected: 'true' }]);
    expect(await snapshotsUsed(access)).toBe(snapsBefore + 1n);
    // A protected template is not deleted snapshot by snapshot.
    const protectedDelete = await storage.deleteSnapshot({ dataset: ref('tpl-pool', 'golden'), snapshotNames: ['v1'] }, T);
    expect(protectedDelete.results[0]?.status?.code).toBe(Status.FAILED_PRECONDITION);
    expect(protectedDelete.results[0]?.status?.message).toContain('protected template');

    const unprotectedClone = await rejection(storage.cloneRbdFromTemplate({ templatePool: 'tpl-pool', templateImage: 'golden', templateSnapshot: 'nope', targetPool: 'ci-pool', targetImage: 'c0' }, T));
    expect(unprotectedClone.code).toBe(Status.NOT_FOUND);

    const gbBefore = await storageGb(access);
    const linked = await storage.cloneRbdFromTemplate({ templatePool: 'tpl-pool', templateImage: 'golden', templateSnapshot: 'v1', targetPool: 'ci-pool', targetImage: 'linked' }, T);
    expect(linked.operation?.kind).toBe(OperationKind.CLONE_RBD_FROM_TEMPLATE);
    const linkedDone = await finished(ops, linked.operation);
    expect(linkedDone.state).toBe(OperationState.SUCCEEDED);
    expect(linkedDone.result).toEqual({ case: 'clonedVolume', value: expect.objectContaining({ backend: RBD_, pool: 'ci-pool', name: 'linked' }) as unknown });
    expect(JSON.parse(await rbd('info', 'ci-pool/linked', '--format', 'json'))).toMatchObject({ parent: { pool: 'tpl-pool', image: 'golden', snapshot: 'v1' } });
    expect((await rbd('image-meta', 'get', 'ci-pool/linked', 'debvisor.owner')).trim()).toBe(ADMIN);
    expect(await storageGb(access)).toBe(gbBefore + 1n);
    const exists = await rejection(storage.cloneRbdFromTemplate({ templatePool: 'tpl-pool', templateImage: 'golden', templateSnapshot: 'v1', targetPool: 'ci-pool', targetImage: 'linked' }, T));
    expect(exists.code).toBe(Status.ALREADY_EXISTS);

    const clonedDelete = await storage.deleteSnapshot({ dataset: ref('tpl-pool', 'golden'), snapshotNames: ['v1'] }, T);
    expect(clonedDelete.results[0]?.status).toMatchObject({ code: Status.FAILED_PRECONDITION, message: expect.stringContaining('has clones: ci-pool/linked') as unknown });
    // The template now has a clone: the volume cannot go, not even with its snapshots.
    for (const deleteSnapshots of [false, true]) {
      const err = await rejection(storage.deleteVolume({ volume: ref('tpl-pool', 'golden'), deleteSnapshots }, T));
      expect(err.code).toBe(Status.FAILED_PRECONDITION);
      expect(err.details).toContain('v1 → ci-pool/linked');
    }

    const flat = await storage.cloneRbdFromTemplate({ templatePool: 'tpl-pool', templateImage: 'golden', templateSnapshot: 'v1', targetPool: 'ci-pool', targetImage: 'flat', flatten: true }, T);
    const flatDone = await finished(ops, flat.operation);
    expect(flatDone.state).toBe(OperationState.SUCCEEDED);
    expect(flatDone.progressPercent).toBe(100);
    expect(JSON.parse(await rbd('info', 'ci-pool/flat', '--format', 'json'))).not.toHaveProperty('parent');
    expect(JSON.parse(await rbd('children', 'tpl-pool/golden@v1', '--format', 'json'))).toMatchObject([{ pool: 'ci-pool', image: 'linked' }]);

    // Remove the linked clone: the template can then be retired with its (unprotected on the way) snapshot.
    await storage.deleteVolume({ volume: ref('ci-pool', 'linked') }, T);
    await storage.deleteVolume({ volume: ref('ci-pool', 'flat') }, T);
    expect((await storage.deleteVolume({ volume: ref('tpl-pool', 'golden'), deleteSnapshots: true }, T)).deletedSnapshots).toEqual(['v1']);
    expect(await snapshotsUsed(access)).toBe(snapsBefore);
    expect(await storageGb(access)).toBe(gbBefore - 1n);
  });
});

describe('debvisorctl on RBD', () => {
  it('creates and deletes snapshots (per-item results, exit 1 if any failed), makes a template and clones it, waiting on the operation', async () => {
    const ctl = (...args: string[]) => ctlOn(daemon, ...args);
    await storage.createVolume({ volume: ref('ci-pool', 'cli-src'), sizeBytes: 16n * MIB }, T);
    const created = await ctl('snapshot', 'create', 'rbd', 'ci-pool', 'cli-src', 's1', '--label', 'before upgrade');
    expect(created.code, created.stderr).toBe(0);
    expect(created.stdout).toMatch(/^name: +s1$/m);
    expect(created.stdout).toMatch(/^label: +before upgrade$/m);
    expect((await ctl('snapshot', 'create', 'rbd', 'ci-pool', 'cli-src', 's2')).code).toBe(0);
    const deleted = await ctl('-o', 'json', 'snapshot', 'delete', 'rbd', 'ci-pool', 'cli-src', 's1', 'nope');
    expect(deleted.code).toBe(1);
    const results = (JSON.parse(deleted.stdout) as { results: { snapshotName: string; status?: { code?: number } }[] }).results;
    expect(results.map((each) => [each.snapshotName, each.status?.code ?? 0])).toEqual([
      ['s1', Status.OK],
      ['nope', Status.NOT_FOUND],
    ]);
    const table = await ctl('snapshot', 'delete', 'rbd', 'ci-pool', 'cli-src', 's2');
    expect(table.code, table.stderr).toBe(0);
    expect(table.stdout).toMatch(/s2 +│ deleted/);
    expect(JSON.parse(await rbd('snap', 'ls', 'ci-pool/cli-src', '--format', 'json'))).toEqual([]);

    const templated = await ctl('template', 'snapshot', 'ci-pool', 'cli-src', 'v1');
    expect(templated.code, templated.stderr).toBe(0);
    expect(templated.stdout).toMatch(/^protected: +true$/m);
    const refused = await ctl('snapshot', 'delete', 'rbd', 'ci-pool', 'cli-src', 'v1');
    expect(refused.code).toBe(1);
    expect(refused.stdout).toContain('FAILED_PRECONDITION');
    const cloned = await ctl('template', 'clone', 'ci-pool', 'cli-src', 'v1', 'ci-pool', 'cli-clone', '--flatten');
    expect(cloned.code, cloned.stderr).toBe(0);
    expect(cloned.stdout).toMatch(/^state: +succeeded$/m);
    expect(JSON.parse(await rbd('info', 'ci-pool/cli-clone', '--format', 'json'))).not.toHaveProperty('parent');
    const unknown = await ctl('template', 'clone', 'ci-pool', 'cli-src', 'v9', 'ci-pool', 'cli-clone2');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^debvisorctl: NOT_FOUND: .*\(trace_id=[0-9a-f]+\)\n$/);

    await storage.deleteVolume({ volume: ref('ci-pool', 'cli-clone') }, T);
    await storage.deleteVolume({ volume: ref('ci-pool', 'cli-src'), deleteSnapshots: true }, T);
  });
});

describe('PruneSnapshots', () => {
  it('keeps what a real policy keeps over backdated snapshots, never protected or cloned ones; dry run first; idempotent', async () => {
    const day = 86_400_000;
    const now = Date.now();
    const stamp = (msAgo: number) => new Date(now - msAgo).toISOString().slice(0, 10).replaceAll('-', '');
    await storage.createVolume({ volume: ref('prune-pool', 'db'), sizeBytes: 64n * MIB }, T);
    // Backdated by name: the date in the name is the snapshot's time.
    const byName = [`daily-${stamp(0)}T0000Z`, `daily-${stamp(day)}`, `daily-${stamp(2 * day)}`, `daily-${stamp(10 * day)}`, `daily-${stamp(40 * day)}`];
    for (const name of byName) await storage.createSnapshot({ dataset: ref('prune-pool', 'db'), snapshotName: name }, T);
    // Backdated by metadata: 20 days old, no date in its name.
    await storage.createSnapshot({ dataset: ref('prune-pool', 'db'), snapshotName: 'old-meta' }, T);
    await rbd('image-meta', 'set', 'prune-pool/db', 'debvisor.snap.old-meta.time', new Date(now - 20 * day).toISOString());
    // A template 50 days old with a clone: never pruned.
    await storage.createRbdTemplateSnapshot({ pool: 'prune-pool', image: 'db', snapshot: 'tpl-old' }, T);
    await rbd('image-meta', 'set', 'prune-pool/db', 'debvisor.snap.tpl-old.time', new Date(now - 50 * day).toISOString());
    const cloneOp = await storage.cloneRbdFromTemplate({ templatePool: 'prune-pool', templateImage: 'db', templateSnapshot: 'tpl-old', targetPool: 'prune-pool', targetImage: 'db-clone' }, T);
    expect((await finished(ops, cloneOp.operation)).state).toBe(OperationState.SUCCEEDED);
    const listed = await storage.listSnapshots({ dataset: ref('prune-pool', 'db') }, T);
    expect(listed.snapshots.map((s) => s.name)).toEqual(['tpl-old', byName[4], 'old-meta', byName[3], byName[2], byName[1], byName[0]]);

    const retention = { keepLast: 1, keepDailyDays: 3, keepWeeklyWeeks: 0 };
    const snapsBefore = await snapshotsUsed(access);
    const dry = await finished(ops, (await storage.pruneSnapshots({ dataset: ref('prune-pool', 'db'), retention, dryRun: true }, T)).operation);
    expect(dry.kind).toBe(OperationKind.PRUNE_SNAPSHOTS);
    expect(dry.state).toBe(OperationState.SUCCEEDED);
    const plan = dry.result.case === 'prunePlan' ? dry.result.value : undefined;
    expect(plan).toMatchObject({ dryRun: true, removedCount: 0, kept: [byName[0], byName[1], byName[2], 'tpl-old'], deleted: [byName[3], 'old-meta', byName[4]] });
    expect((await storage.listSnapshots({ dataset: ref('prune-pool', 'db') }, T)).snapshots).toHaveLength(7);

    const real = await finished(ops, (await storage.pruneSnapshots({ dataset: ref('prune-pool', 'db'), retention }, T)).operation);
    expect(real.state).toBe(OperationState.SUCCEEDED);
    expect(real.result.case === 'prunePlan' ? real.result.value : undefined).toMatchObject({ dryRun: false, removedCount: 3, deleted: [byName[3], 'old-meta', byName[4]] });
    expect((await storage.listSnapshots({ dataset: ref('prune-pool', 'db') }, T)).snapshots.map((s) => s.name)).toEqual(['tpl-old', byName[2], byName[1], byName[0]]);
    expect(await snapshotsUsed(access)).toBe(snapsBefore - 3n);

    const again = await finished(ops, (await storage.pruneSnapshots({ dataset: ref('prune-pool', 'db'), retention }, T)).operation);
    expect(again.result.case === 'prunePlan' ? again.result.value : undefined).toMatchObject({ removedCount: 0, deleted: [] });

    const unknown = await rejection(storage.pruneSnapshots({ dataset: ref('prune-pool', 'ghost'), retention }, T));
    expect(unknown.code).toBe(Status.NOT_FOUND);
  });
});

describe('RBD volumes in use by a VM', () => {
  it('refuses to delete an image that a VM on this host has as an RBD disk (also at a snapshot), naming the VM; force deletes it', async () => {
    await storage.createVolume({ volume: ref('ci-pool', 'vm-root'), sizeBytes: GIB }, T);
    await defineTestDomain(
      libvirt,
      'web-vm',
      '0000000000b1',
      `<disk type='network' device='disk'><source protocol='rbd' name='ci-pool/vm-root'><host name='127.0.0.1' port='6789'/></source><target dev='vdb' bus='virtio'/></disk>`,
    );
    const refused = await rejection(storage.deleteVolume({ volume: ref('ci-pool', 'vm-root') }, T));
    expect(refused.code).toBe(Status.FAILED_PRECONDITION);
    expect(refused.details).toContain('"web-vm"');
    // Another image whose name merely starts the same is not in use.
    await storage.createVolume({ volume: ref('ci-pool', 'vm-root-2'), sizeBytes: GIB }, T);
    await storage.deleteVolume({ volume: ref('ci-pool', 'vm-root-2') }, T);
    await storage.deleteVolume({ volume: ref('ci-pool', 'vm-root'), force: true }, T);
    expect((await rejection(storage.deleteVolume({ volume: ref('ci-pool', 'vm-root'), force: true }, T))).code).toBe(Status.NOT_FOUND);
  });
});
