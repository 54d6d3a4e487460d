// ImageService end to end: the REAL daemon importing over HTTP from a REAL server on loopback
// (the test config allow-lists 127.0.0.0/8 and plain http) images that qemu-img made, into its
// content-addressed library, and provisioning a REAL Ceph RBD volume from a library image,
// read back byte for byte. The server counts requests and can hold a body mid-way on a latch.
// LVM volumes cannot be written on this kernel (no device-mapper: see storage-provision.test.ts), so
// here the byte-for-byte read-back is on RBD; the LVM one is test/images/library-lvm.test.ts (a guest
// with device-mapper).
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { ImageService } from '../../src/gen/debvisor/v1/image_pb.js';
import { ImageSource } from '../../src/gen/debvisor/v1/image_types_pb.js';
import { OperationKind, OperationService, OperationState, type Operation } from '../../src/gen/debvisor/v1/operation_pb.js';
import { QuotaResource, ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { StorageBackend } from '../../src/gen/debvisor/v1/storage_types_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { cephAvailable, RBD, startCeph, type TestCeph } from '../support/ceph.js';
import { ctlOn } from '../support/ctl.js';
import { startLibvirt, type TestLibvirt } from '../support/libvirt.js';
import { auditRecords, clientFor, startDaemon, type RunningDaemon, type StartDaemonOptions } from '../support/daemon.js';
import { metricSum, metricsText, rejection } from '../support/security.js';
import { finished, MIB, NO_RATE_LIMITS, T, used, type Client } from '../support/storage.js';

const run = promisify(execFile);
const QEMU_IMG = '/usr/bin/qemu-img';
const POOL = `img-pool-${process.pid}`;
const RAW_BYTES = 4 * 1024 * 1024;

// ---- a real HTTP image server on loopback -------------------------------------------------------

interface Served {
  readonly body: Buffer;
  /** Send this many bytes, then wait for `release()` before the rest (a stalled server). */
  holdAt?: number;
  hold?: Promise<void>;
  release?: () => void;
  /** Resolves once a response has reached holdAt. */
  held?: Promise<void>;
  onHeld?: () => void;
}

interface LoggedRequest {
  readonly path: string;
  readonly range: string | undefined;
}

class ImageServer {
  readonly files = new Map<string, Served>();
  readonly log: LoggedRequest[] = [];
  private server!: Server;
  private port = 0;

  async start(): Promise<void> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  url(path: string): string {
    return `http://127.0.0.1:${this.port}${path}`;
  }

  serve(path: string, body: Buffer): Served {
    const served: Served = { body };
    this.files.set(path, served);
    return served;
  }

  /** Holds bodies of `path` after `bytes` until the returned release is called. */
  holdAfter(path: string, bytes: number): { release: () => void; held: Promise<void> } {
    const served = this.files.get(path)!;
    served.holdAt = bytes;
    served.hold = new Promise((resolve) => (served.release = resolve));
    served.held = new Promise((resolve) => (served.onHeld = resolve));
    return { release: () => served.release?.(), held: served.held };
  }

  requests(path: string): LoggedRequest[] {
    return this.log.filter((r) => r.path === path);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?')[0] ?? '';
    const range = req.headers.range;
    this.log.push({ path, range });
    const served = this.files.get(path);
    if (!served) {
      res.writeHead(404).end();
      return;
    }
    const etag = `"${createHash('sha256').update(served.body).digest('hex').slice(0, 16)}"`;
    let start = 0;
    const m = range ? /^bytes=(\d+)-$/.exec(range) : null;
    const ifRange = req.headers['if-range'];
    if (m && (ifRange === undefined || ifRange === etag) && Number(m[1]) < served.body.length) {
      start = Number(m[1]);
      res.writeHead(206, { 'content-length': served.body.length - start, 'content-range': `bytes ${start}-${served.body.length - 1}/${served.body.length}`, etag, 'accept-ranges': 'bytes' });
    } else {
      res.writeHead(200, { 'content-length': served.body.length, etag, 'accept-ranges': 'bytes' });
    }
    const holdAt = served.holdAt;
    if (holdAt !== undefined && start < holdAt) {
      await new Promise<void>((resolve) => res.write(served.body.subarray(start, holdAt), () => resolve()));
      served.onHeld?.();
      await Promise.race([served.hold, new Promise((resolve) => res.once('close', resolve))]);
      if (res.destroyed) return;
      start = holdAt;
    }
    res.end(served.body.subarray(start));
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

// ---- fixtures -----------------------------------------------------------------------------------

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

function patterned(bytes: number, seed: number): Buffer {
  const data = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i += 4) data.writeUInt32LE((Math.imul(i, 2654435761) ^ seed) >>> 0, i);
  return data;
}

async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const imagesGb = (access: Client<typeof AccessService>) => used(access, QuotaResource.IMAGES_GB);

let dir: string;
let imagesDir: string;
let server: ImageServer;
let pattern: Buffer;
let qcow2: Buffer;
let raw: Buffer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'debvisor-images-'));
  imagesDir = join(dir, 'images');
  await mkdir(imagesDir);
  pattern = patterned(RAW_BYTES, 0x5a5a5a5a);
  await writeFile(join(dir, 'disk.raw'), pattern);
  await run(QEMU_IMG, ['convert', '-f', 'raw', '-O', 'qcow2', join(dir, 'disk.raw'), join(dir, 'disk.qcow2')]);
  qcow2 = await readFile(join(dir, 'disk.qcow2'));
  raw = patterned(2 * 1024 * 1024, 0x1234);
  server = new ImageServer();
  await server.start();
  server.serve('/debian.qcow2', qcow2);
  server.serve('/other.raw', raw);
});

afterAll(async () => {
  await server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** What a test daemon needs to import from the loopback server. */
function imageConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { ...NO_RATE_LIMITS, images: { allow_http: true, allowed_networks: ['127.0.0.0/8'] }, ...extra };
}

async function publishedDigests(): Promise<string[]> {
  try {
    return (await readdir(join(imagesDir, 'sha256'))).filter((f) => !f.startsWith('.'));
  } catch {
    return [];
  }
}

describe('ImageService', () => {
  let ceph: TestCeph | undefined;
  let daemon: RunningDaemon;
  let images: Client<typeof ImageService>;
  let storage: Client<typeof StorageService>;
  let ops: Client<typeof OperationService>;
  let access: Client<typeof AccessService>;
  /** While this file exists, the daemon's qemu-img holds every `convert` (a provisioning mid-write). */
  let holdFile: string;
  let convertEntered: string;

  beforeAll(async () => {
    if (cephAvailable()) ceph = await startCeph({ pools: [POOL] });
    // qemu-img itself, behind a wrapper that can hold `convert` before it starts: a provisioning that
    // stays running for as long as a test needs (real qemu-img cannot be paused on demand).
    holdFile = join(dir, 'hold-convert');
    convertEntered = join(dir, 'convert-entered');
    const wrapper = join(dir, 'qemu-img');
    await writeFile(
      wrapper,
      `#!/bin/sh\nif [ "$1" = convert ]; then\n  : > '${convertEntered}'\n  while [ -e '${holdFile}' ]; do sleep 0.05; done\nfi\nexec ${QEMU_IMG} "$@"\n`,
    );
    await chmod(wrapper, 0o755);
    const env: Record<string, string> = { DEBVISOR_RPCD_IMAGES_DIR: imagesDir };
    if (ceph) Object.assign(env, { DEBVISOR_RPCD_RBD_CEPH_CONF: ceph.conf, DEBVISOR_RPCD_RBD_POOLS: POOL });
    // Audit level request: the log would hold request bodies, and must still hold no signed URL.
    daemon = await startDaemon({ env, config: imageConfig({ qemu_img: { path: wrapper }, audit: { level: 'request' } }) });
    images = await clientFor(ImageService, daemon);
    storage = await clientFor(StorageService, daemon);
    ops = await clientFor(OperationService, daemon);
    access = await clientFor(AccessService, daemon);
  });

  afterAll(async () => {
    for (const c of [images, storage, ops, access] as ({ close(): void } | undefined)[]) c?.close();
    await (daemon as RunningDaemon | undefined)?.cleanup();
    await ceph?.stop();
  });

  it('refuses a bad sha256, url or name at once, naming the field', async () => {
    const good = { url: server.url('/debian.qcow2'), sha256: sha(qcow2) };
    const cases: [Parameters<typeof images.importImage>[0], string][] = [
      [{ ...good, sha256: '' }, 'sha256: required'],
      [{ ...good, sha256: 'abc' }, 'sha256: must be 64 hex'],
      [{ ...good, sha256: 'g'.repeat(64) }, 'sha256: must be 64 hex'],
      [{ ...good, url: '' }, 'url: required'],
      [{ ...good, url: 'ftp://127.0.0.1/x' }, 'url: '],
      [{ ...good, url: 'not a url' }, 'url: '],
      [{ ...good, url: 'http://user:pw@127.0.0.1/x' }, 'url: must not contain a user name'],
      [{ ...good, name: '-rf' }, 'name: '],
      [{ ...good, name: 'a/b' }, 'name: '],
      [{ ...good, name: 'sha256:abc' }, 'name: '],
      [{ ...good, format: 'QCOW2!' }, 'format: '],
      [{ ...good, format: 'vmdk' }, 'format: not accepted on this node (allowed: raw, qcow2)'],
      [{ ...good, replaceAlias: true }, 'replace_alias: '],
    ];
    for (const [request, problem] of cases) {
      const err = await rejection(images.importImage(request, T));
      expect({ request, code: err.code }).toEqual({ request, code: Status.INVALID_ARGUMENT });
      expect(err.details).toContain(problem);
    }
    for (const image of ['', 'sha256:xyz', '../x']) {
      const err = await rejection(images.getImage({ image }, T));
      expect(err.code).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toMatch(/^image: /);
    }
    expect((await images.listImages({}, T)).images).toEqual([]);
    expect(server.log).toEqual([]);
  });

  it('imports a qcow2 image into sha256/<digest>, records it, and charges images_gb', async () => {
    const digest = sha(qcow2);
    const { operation } = await images.importImage({ url: `${server.url('/debian.qcow2')}?signature=secret#x`, sha256: digest.toUpperCase(), name: 'debian-12', format: 'qcow2' }, T);
    expect(operation?.kind).toBe(OperationKind.IMPORT_IMAGE);
    expect(operation?.target).toBe('debian-12');
    const done = await finished(ops, operation);
    expect(done.error).toBeUndefined();
    expect(done.state).toBe(OperationState.SUCCEEDED);
    expect(done.result.case).toBe('importedImage');
    // The URL is a secret field: the audit record keeps none of it (a signed URL's query is a credential).
    expect(JSON.stringify(auditRecords(daemon))).not.toContain('signature=secret');
    const published = await readFile(join(imagesDir, 'sha256', digest));
    expect(published.equals(qcow2)).toBe(true);
    const expected = {
      sha256: digest,
      aliases: ['debian-12'],
      sizeBytes: BigInt(qcow2.length),
      format: 'qcow2',
      virtualSizeBytes: BigInt(RAW_BYTES),
      source: ImageSource.URL,
      sourceUrl: server.url('/debian.qcow2'),
      owner: 'spiffe://debvisor/admin/admin',
    };
    expect(done.result.value).toMatchObject(expected);
    expect((await images.getImage({ image: 'debian-12' }, T)).image).toMatchObject(expected);
    expect((await images.getImage({ image: `sha256:${digest}` }, T)).image).toMatchObject(expected);
    expect((await images.listImages({}, T)).images.map((i) => i.sha256)).toEqual([digest]);
    expect(server.requests('/debian.qcow2')).toHaveLength(1);
    expect(await imagesGb(access)).toBe(1n);
    const metrics = await metricsText(daemon);
    expect(metricSum(metrics, 'image_download_bytes_total')).toBe(qcow2.length);
    expect(metricSum(metrics, 'image_imports_total', { result: 'downloaded' })).toBe(1);
  });

  it('completes at once without a download when the digest is already present', async () => {
    const before = server.requests('/debian.qcow2').length;
    const { operation } = await images.importImage({ url: server.url('/debian.qcow2'), sha256: sha(qcow2), name: 'debian-stable' }, T);
    const done = await finished(ops, operation);
    expect(done.state).toBe(OperationState.SUCCEEDED);
    expect(server.requests('/debian.qcow2')).toHaveLength(before);
    expect((await images.getImage({ image: 'debian-stable' }, T)).image?.aliases).toEqual(['debian-12', 'debian-stable']);
    expect(await imagesGb(access)).toBe(1n);
    expect(metricSum(await metricsText(daemon), 'image_cache_hits_total')).toBeGreaterThanOrEqual(1);
  });

  it('publishes nothing for a wrong digest and names both digests', async () => {
    const wrong = sha(Buffer.from('not the image'));
    const before = await publishedDigests();
    const done = await finished(ops, (await images.importImage({ url: server.url('/other.raw'), sha256: wrong, name: 'wrong' }, T)).operation);
    expect(done.state).toBe(OperationState.FAILED);
    expect(done.error?.code).toBe(Status.FAILED_PRECONDITION);
    expect(done.error?.message).toContain(wrong);
    expect(done.error?.message).toContain(sha(raw));
    expect(await publishedDigests()).toEqual(before);
    expect(await readdir(join(imagesDir, 'sha256', '.partial'))).toEqual([]);
    expect((await rejection(images.getImage({ image: 'wrong' }, T))).code).toBe(Status.NOT_FOUND);
    expect(await imagesGb(access)).toBe(1n);
  });

  it('downloads a digest once for two concurrent imports', async () => {
    const body = patterned(3 * 1024 * 1024, 0x77);
    server.serve('/concurrent.raw', body);
    const hold = server.holdAfter('/concurrent.raw', 1024 * 1024);
    const first = (await images.importImage({ url: server.url('/concurrent.raw'), sha256: sha(body), name: 'concurrent-a' }, T)).operation;
    await hold.held;
    // Progress in bytes while the body is held: what arrived, of the total the server announced.
    await until('the first import to report its bytes', async () => {
      const op = (await ops.getOperation({ operationId: first!.id }, T)).operation;
      return op?.progressBytes === BigInt(1024 * 1024) && op.totalBytes === BigInt(body.length);
    });
    const second = (await images.importImage({ url: server.url('/concurrent.raw'), sha256: sha(body), name: 'concurrent-b' }, T)).operation;
    // Nothing may delete what is being imported.
    const busy = await rejection(images.deleteImage({ image: `sha256:${sha(body)}` }, T));
    expect(busy.code).toBe(Status.FAILED_PRECONDITION);
    expect(busy.details).toContain('being imported');
    // The second waits on the first rather than downloading too.
    await until('the second import to wait', async () => (await ops.getOperation({ operationId: second!.id }, T)).operation?.stage.includes('waiting') === true);
    hold.release();
    const [a, b] = await Promise.all([finished(ops, first), finished(ops, second)]);
    expect([a.state, b.state]).toEqual([OperationState.SUCCEEDED, OperationState.SUCCEEDED]);
    expect([a.progressBytes, a.totalBytes, b.progressBytes]).toEqual([BigInt(body.length), BigInt(body.length), BigInt(body.length)]);
    expect(server.requests('/concurrent.raw')).toHaveLength(1);
    expect((await images.getImage({ image: 'concurrent-a' }, T)).image?.aliases).toEqual(['concurrent-a', 'concurrent-b']);
    expect(metricSum(await metricsText(daemon), 'image_imports_total', { result: 'joined' })).toBe(1);
  });

  it('re-points a name to another digest only with replace_alias', async () => {
    const taken = await rejection(images.importImage({ url: server.url('/other.raw'), sha256: sha(raw), name: 'debian-12' }, T));
    expect(taken.code).toBe(Status.ALREADY_EXISTS);
    expect(taken.details).toContain(`name: image name "debian-12" already points at sha256:${sha(qcow2)}`);
    const done = await finished(ops, (await images.importImage({ url: server.url('/other.raw'), sha256: sha(raw), name: 'debian-12', replaceAlias: true }, T)).operation);
    expect(done.state).toBe(OperationState.SUCCEEDED);
    expect((await images.getImage({ image: 'debian-12' }, T)).image).toMatchObject({ sha256: sha(raw), format: 'raw' });
    expect((await images.getImage({ image: `sha256:${sha(qcow2)}` }, T)).image?.aliases).toEqual(['debian-stable']);
    // Put it back for the provisioning tests.
    await finished(ops, (await images.importImage({ url: server.url('/debian.qcow2'), sha256: sha(qcow2), name: 'debian-12', replaceAlias: true }, T)).operation);
  });

  it('refuses an import over the images_gb quota at once, but not a cache hit, and recounts the usage', async () => {
    const admin = 'spiffe://debvisor/admin/admin';
    const usedNow = await imagesGb(access);
    await access.setQuota({ principal: admin, resource: QuotaResource.IMAGES_GB, limit: usedNow }, T);
    try {
      const body = patterned(1024 * 1024, 0x31);
      server.serve('/over-quota.raw', body);
      const refused = await rejection(images.importImage({ url: server.url('/over-quota.raw'), sha256: sha(body) }, T));
      expect(refused.code).toBe(Status.RESOURCE_EXHAUSTED);
      expect(refused.details).toContain('images_gb');
      expect(server.requests('/over-quota.raw')).toEqual([]);
      const hit = await finished(ops, (await images.importImage({ url: server.url('/other.raw'), sha256: sha(raw) }, T)).operation);
      expect(hit.state).toBe(OperationState.SUCCEEDED);
    } finally {
      await access.setQuota({ principal: admin, resource: QuotaResource.IMAGES_GB, unlimited: true }, T);
    }
    const recount = await access.recomputeQuota({ principal: admin }, T);
    expect(recount.after.find((q) => q.resource === QuotaResource.IMAGES_GB)?.used).toBe(usedNow);
  });

  it('stores an upload (header, then chunks) checked against its SHA-256, and publishes nothing for a wrong one', async () => {
    const body = patterned(3 * 1024 * 1024 + 124, 0x5151);
    function* parts(header: { sha256: string; name?: string; sizeBytes?: bigint }, data: Buffer) {
      yield { part: { case: 'header' as const, value: header } };
      for (let at = 0; at < data.length; at += 256 * 1024) yield { part: { case: 'chunk' as const, value: data.subarray(at, at + 256 * 1024) } };
    }
    const before = await publishedDigests();
    const wrong = await rejection(images.uploadImage(parts({ sha256: sha(Buffer.from('other')), name: 'uploaded-wrong' }, body), T));
    expect(wrong.code).toBe(Status.FAILED_PRECONDITION);
    expect(wrong.details).toContain(`sha256: the uploaded file has SHA-256 ${sha(body)}`);
    expect(await publishedDigests()).toEqual(before);
    expect(await readdir(join(imagesDir, 'sha256', '.partial'))).toEqual([]);
    expect((await rejection(images.getImage({ image: 'uploaded-wrong' }, T))).code).toBe(Status.NOT_FOUND);

    const gb = await imagesGb(access);
    const { image } = await images.uploadImage(parts({ sha256: sha(body), name: 'uploaded', sizeBytes: BigInt(body.length) }, body), T);
    expect(image).toMatchObject({ sha256: sha(body), aliases: ['uploaded'], sizeBytes: BigInt(body.length), format: 'raw', source: ImageSource.UPLOAD, sourceUrl: '' });
    expect((await readFile(join(imagesDir, 'sha256', sha(body)))).equals(body)).toBe(true);
    expect(await imagesGb(access)).toBe(gb + 1n);

    // Bad headers, named; a stream without one; a second header.
    const noHeader = await rejection(images.uploadImage([{ part: { case: 'chunk' as const, value: body.subarray(0, 10) } }], T));
    expect(noHeader.code).toBe(Status.INVALID_ARGUMENT);
    expect(noHeader.details).toMatch(/^header: required/);
    const badDigest = await rejection(images.uploadImage(parts({ sha256: 'xyz' }, body), T));
    expect(badDigest.details).toMatch(/^header\.sha256: /);
    const twice = await rejection(images.uploadImage([...parts({ sha256: sha(Buffer.from('x')) }, Buffer.from('x')), { part: { case: 'header' as const, value: { sha256: sha(body) } } }], T));
    expect(twice.code).toBe(Status.INVALID_ARGUMENT);
    expect(twice.details).toMatch(/^chunk: /);
    await images.deleteImage({ image: 'uploaded' }, T);
    expect(await imagesGb(access)).toBe(gb);
  });

  it('refuses a scoped key outside its image globs', async () => {
    const key = await access.createApiKey({ description: 'ci images', permissions: ['image:*'], resourceGlobs: [{ kind: ResourceKind.IMAGE, glob: 'ci-*' }] }, T);
    const keyed = await clientFor(ImageService, daemon, null);
    try {
      const auth = { ...T, metadata: { authorization: `Bearer ${key.secret}` } };
      const outside = await rejection(keyed.importImage({ url: server.url('/other.raw'), sha256: sha(raw), name: 'prod-base' }, auth));
      expect(outside.code).toBe(Status.PERMISSION_DENIED);
      expect(outside.details).toContain('not scoped to image "prod-base"');
      expect((await rejection(keyed.getImage({ image: 'debian-12' }, auth))).code).toBe(Status.PERMISSION_DENIED);
      expect((await rejection(keyed.deleteImage({ image: 'debian-12' }, auth))).code).toBe(Status.PERMISSION_DENIED);
      // An upload is scoped by its header's name; the chunks after it are not read by RBAC.
      const header = (name: string) => ({ part: { case: 'header' as const, value: { sha256: sha(raw), name } } });
      const chunk = { part: { case: 'chunk' as const, value: raw.subarray(0, 256 * 1024) } };
      const upload = await rejection(keyed.uploadImage([header('prod-upload'), chunk], auth));
      expect(upload.code).toBe(Status.PERMISSION_DENIED);
      expect(upload.details).toContain('not scoped to image "prod-upload"');
      // The digest is present already: a cache hit that names it (the chunks are not needed).
      expect((await keyed.uploadImage([header('ci-upload'), chunk], auth)).image?.aliases).toContain('ci-upload');
      await keyed.deleteImage({ image: 'ci-upload', aliasOnly: true }, auth);
      // A listing shows only what its globs cover: nothing here.
      expect((await keyed.listImages({}, auth)).images).toEqual([]);
      const inside = await finished(ops, (await keyed.importImage({ url: server.url('/other.raw'), sha256: sha(raw), name: 'ci-base' }, auth)).operation);
      expect(inside.state).toBe(OperationState.SUCCEEDED);
      expect((await keyed.listImages({}, auth)).images.map((i) => i.aliases)).toEqual([['ci-base']]);
      await keyed.deleteImage({ image: 'ci-base', aliasOnly: true }, auth);
    } finally {
      keyed.close();
    }
  });

  it('debvisorctl image import --wait, list, get and delete', async () => {
    const body = patterned(1024 * 1024, 0x99);
    server.serve('/cli.raw', body);
    const imported = await ctlOn(daemon, 'image', 'import', server.url('/cli.raw'), '--sha256', sha(body), '--name', 'cli-image', '--wait');
    expect(imported.code, imported.stderr).toBe(0);
    expect(imported.stdout).toMatch(/^state: +succeeded$/m);
    expect(imported.stdout).toContain(`sha256:${sha(body)}`);
    const listed = await ctlOn(daemon, '-o', 'json', 'image', 'list', '--name', 'cli-*');
    expect(listed.code, listed.stderr).toBe(0);
    expect((JSON.parse(listed.stdout) as { images: { sha256: string }[] }).images.map((i) => i.sha256)).toEqual([sha(body)]);
    const got = await ctlOn(daemon, 'image', 'get', 'cli-image');
    expect(got.stdout).toMatch(/^format: +raw$/m);
    const badDigest = await ctlOn(daemon, 'image', 'import', server.url('/cli.raw'), '--sha256', 'nope');
    expect(badDigest.code).toBe(1);
    expect(badDigest.stderr).toContain('sha256: must be 64 hex');
    // Upload: the digest is computed by debvisorctl; a cache hit for the same content.
    const file = join(dir, 'upload.qcow2');
    await writeFile(file, qcow2);
    const uploaded = await ctlOn(daemon, 'image', 'upload', file, '--name', 'cli-upload');
    expect(uploaded.code, uploaded.stderr).toBe(0);
    expect(uploaded.stdout).toMatch(new RegExp(`^sha256: +${sha(qcow2)}$`, 'm'));
    expect((await images.getImage({ image: 'cli-upload' }, T)).image?.sha256).toBe(sha(qcow2));
    await images.deleteImage({ image: 'cli-upload', aliasOnly: true }, T);
    const deleted = await ctlOn(daemon, 'image', 'delete', 'cli-image');
    expect(deleted.code, deleted.stderr).toBe(0);
    expect((await rejection(images.getImage({ image: 'cli-image' }, T))).code).toBe(Status.NOT_FOUND);
  });

  describe.skipIf(!cephAvailable())('provisioning from a library image (RBD)', () => {
    const rbdRef = (name: string) => ({ backend: StorageBackend.RBD, pool: POOL, name });

    it('writes the image into a new RBD volume, records its digest, and lists it by image_digest', async () => {
      const { operation } = await storage.provisionVolume({ volume: rbdRef('from-lib'), sizeBytes: 8n * MIB, image: 'debian-12', tags: { os: 'debian' } }, T);
      const done = await finished(ops, operation);
      expect(done.error).toBeUndefined();
      expect(done.state).toBe(OperationState.SUCCEEDED);
      const exported = join(dir, 'exported.raw');
      await run(RBD, ['--conf', ceph!.conf, 'export', `${POOL}/from-lib`, exported]);
      const back = await readFile(exported);
      expect(back.length).toBe(8 * 1024 * 1024);
      expect(back.subarray(0, RAW_BYTES).equals(pattern)).toBe(true);
      expect(back.subarray(RAW_BYTES).every((b) => b === 0)).toBe(true);

      // By digest too (through debvisorctl); and one volume not from the library.
      const ctl = await ctlOn(daemon, 'volume', 'provision', 'rbd', POOL, 'from-digest', '--from-image', `sha256:${sha(raw)}`, '--size', '8MiB');
      expect(ctl.code, ctl.stderr).toBe(0);
      await storage.createVolume({ volume: rbdRef('plain'), sizeBytes: 8n * MIB }, T);
      const lineage = await storage.listVolumes({ imageDigest: sha(qcow2) }, T);
      expect(lineage.volumes.map((v) => v.ref?.name)).toEqual(['from-lib']);
      expect(lineage.volumes[0]?.tags).toEqual({ os: 'debian', 'debvisor.image_sha256': sha(qcow2) });
      expect((await storage.listVolumes({ imageDigest: sha(raw) }, T)).volumes.map((v) => v.ref?.name)).toEqual(['from-digest']);
      const bad = await rejection(storage.listVolumes({ imageDigest: 'xyz' }, T));
      expect(bad.code).toBe(Status.INVALID_ARGUMENT);
      expect(bad.details).toMatch(/^image_digest: /);
      // A user cannot forge the lineage tag.
      const forged = await rejection(storage.createVolume({ volume: rbdRef('forged'), sizeBytes: 8n * MIB, tags: { 'debvisor.image_sha256': sha(qcow2) } }, T));
      expect(forged.code).toBe(Status.INVALID_ARGUMENT);
      // force: no libvirt on this daemon to ask whether a VM uses them (none does).
      for (const name of ['from-lib', 'from-digest', 'plain']) await storage.deleteVolume({ volume: rbdRef(name), force: true }, T);
    });

    it('refuses an unknown image, and image with image_path, at once', async () => {
      const unknown = await rejection(storage.provisionVolume({ volume: rbdRef('never'), sizeBytes: 8n * MIB, image: 'no-such-image' }, T));
      expect(unknown.code).toBe(Status.NOT_FOUND);
      const both = await rejection(storage.provisionVolume({ volume: rbdRef('never'), sizeBytes: 8n * MIB, image: 'debian-12', imagePath: 'x.raw' }, T));
      expect(both.code).toBe(Status.INVALID_ARGUMENT);
      expect(both.details).toMatch(/^image: /);
    });

    it('refuses DeleteImage while a provisioning reads the image, and deletes it afterwards', async () => {
      await writeFile(holdFile, '');
      await rm(convertEntered, { force: true });
      const { operation } = await storage.provisionVolume({ volume: rbdRef('held'), sizeBytes: 8n * MIB, image: 'debian-12' }, T);
      try {
        await until('qemu-img convert to start', () => stat(convertEntered).then(() => true, () => false));
        const busy = await rejection(images.deleteImage({ image: 'debian-12' }, T));
        expect(busy.code).toBe(Status.FAILED_PRECONDITION);
        expect(busy.details).toContain('in use');
      } finally {
        await rm(holdFile, { force: true });
      }
      expect((await finished(ops, operation)).state).toBe(OperationState.SUCCEEDED);
      await storage.deleteVolume({ volume: rbdRef('held'), force: true }, T);
      const gbBefore = await imagesGb(access);
      const deleted = await images.deleteImage({ image: 'debian-12' }, T);
      expect(deleted).toMatchObject({ deleted: true, image: { sha256: sha(qcow2) } });
      expect(await publishedDigests()).not.toContain(sha(qcow2));
      expect((await rejection(images.getImage({ image: 'debian-stable' }, T))).code).toBe(Status.NOT_FOUND);
      expect(await imagesGb(access)).toBe(gbBefore - 1n);
    });
  });
});

describe('ImageService across a daemon restart', () => {
  it.each(['SIGKILL', 'SIGTERM'] as const)('resumes an import interrupted by a daemon stopped with %s, with a Range request', async (signal) => {
    const body = patterned(6 * 1024 * 1024, signal === 'SIGKILL' ? 0x4242 : 0x4343);
    const digest = sha(body);
    const path = `/resume-${signal}.raw`;
    server.serve(path, body);
    const hold = server.holdAfter(path, 2 * 1024 * 1024);
    const state = join(dir, `restart-state-${signal}`);
    const options: StartDaemonOptions = {
      env: { DEBVISOR_RPCD_IMAGES_DIR: imagesDir, DEBVISOR_RPCD_NODE_NAME: 'node-images' },
      config: imageConfig({ store: { backend: 'embedded', embedded: { dir: state } } }),
    };
    const first = await startDaemon(options);
    let second: RunningDaemon | undefined;
    try {
      const images = await clientFor(ImageService, first);
      const { operation } = await images.importImage({ url: server.url(path), sha256: digest, name: 'resumed' }, T);
      images.close();
      await hold.held;
      const partial = join(imagesDir, 'sha256', '.partial', digest);
      await until('the partial file to hold the first part', () => stat(partial).then((s) => s.size >= 2 * 1024 * 1024, () => false));
      await first.stop(signal);
      hold.release();
      second = await startDaemon({ ...options, pkiDir: first.pki.dir });
      const ops = await clientFor(OperationService, second);
      const done: Operation = await finished(ops, operation, 60_000);
      ops.close();
      expect(done.error).toBeUndefined();
      expect(done.state).toBe(OperationState.SUCCEEDED);
      expect(second.logRecords().some((r) => r.msg === 'resuming operation after restart')).toBe(true);
      expect(server.requests(path).map((r) => r.range)).toEqual([undefined, `bytes=${2 * 1024 * 1024}-`]);
      expect((await readFile(join(imagesDir, 'sha256', digest))).equals(body)).toBe(true);
    } finally {
      await second?.cleanup();
      await first.cleanup();
    }
  });
});

describe.skipIf(!cephAvailable())('CreateVm with a disk from a library image (RBD, libvirt test driver)', () => {
  let ceph: TestCeph;
  let libvirt: TestLibvirt;
  let daemon: RunningDaemon;
  const pool = `${POOL}-vm`;

  beforeAll(async () => {
    [ceph, libvirt] = await Promise.all([startCeph({ pools: [pool] }), startLibvirt()]);
    daemon = await startDaemon({
      env: {
        DEBVISOR_RPCD_IMAGES_DIR: join(dir, 'images-vm'),
        DEBVISOR_RPCD_RBD_CEPH_CONF: ceph.conf,
        DEBVISOR_RPCD_RBD_POOLS: pool,
        DEBVISOR_RPCD_LIBVIRT_URI: libvirt.uri,
        DEBVISOR_RPCD_LIBVIRT_VM_DEFAULTS_DOMAIN_TYPE: 'test',
      },
      config: imageConfig(),
    });
  });

  afterAll(async () => {
    await (daemon as RunningDaemon | undefined)?.cleanup();
    await Promise.all([(ceph as TestCeph | undefined)?.stop(), (libvirt as TestLibvirt | undefined)?.stop()]);
  });

  it('provisions the disk from the image by name, records its digest, and DeleteVm removes the volume', async () => {
    const [images, vms, storage, ops] = await Promise.all([clientFor(ImageService, daemon), clientFor(VmService, daemon), clientFor(StorageService, daemon), clientFor(OperationService, daemon)]);
    try {
      const imported = await finished(ops, (await images.importImage({ url: server.url('/debian.qcow2'), sha256: sha(qcow2), name: 'vm-base' }, T)).operation);
      expect(imported.state).toBe(OperationState.SUCCEEDED);
      const disk = (value: { image?: string; imagePath?: string }) => ({ source: { case: 'image' as const, value: { backend: StorageBackend.RBD, pool, sizeBytes: 8n * MIB, ...value } }, bootOrder: 1 });
      const spec = (image: { image?: string; imagePath?: string }) => ({ name: 'from-image', vcpus: 1, memoryBytes: 256n * MIB, disks: [disk(image)] });

      const both = await rejection(vms.createVm({ spec: spec({ image: 'vm-base', imagePath: 'x.raw' }) }, T));
      expect([both.code, both.details]).toEqual([Status.INVALID_ARGUMENT, expect.stringContaining('spec.disks[0].image.image: give either image or image_path')]);
      const unknown = await rejection(vms.createVm({ spec: spec({ image: 'no-such-image' }) }, T));
      expect(unknown.code).toBe(Status.NOT_FOUND);

      const { plan, operation } = await vms.createVm({ spec: spec({ image: 'vm-base' }) }, T);
      expect(plan?.volumes.map((v) => v.source)).toEqual([`image:sha256:${sha(qcow2)}`]);
      const created = await finished(ops, operation, 120_000);
      expect(created.error).toBeUndefined();
      expect(created.state).toBe(OperationState.SUCCEEDED);
      const lineage = await storage.listVolumes({ backend: StorageBackend.RBD, pool, imageDigest: sha(qcow2) }, T);
      expect(lineage.volumes.map((v) => v.ref?.name)).toEqual(['from-image-disk0']);

      const deleted = await finished(ops, (await vms.deleteVm({ vmName: 'from-image', deleteVolumes: true }, T)).operation, 120_000);
      expect(deleted.state).toBe(OperationState.SUCCEEDED);
      expect((await storage.listVolumes({ backend: StorageBackend.RBD, pool }, T)).volumes).toEqual([]);
    } finally {
      for (const c of [images, vms, storage, ops]) c.close();
    }
  });
});
