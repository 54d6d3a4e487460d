// Disks that fill up, on a real tmpfs mounted for the test:
// - the embedded store's directory, with a filler file taking its last free block: mutations
//   answer UNAVAILABLE (never INTERNAL, never a crash), change nothing and hold no quota; reads
//   keep working; once space is freed, the same calls (same request_id) succeed exactly once;
// - the image library's directory, smaller than the image imported over HTTP: the import fails
//   RESOURCE_EXHAUSTED, leaves no partial file, and gives its images_gb back.
// Needs root for the mount (as the LVM tests do); skipped otherwise, never in CI.
import { execFile } from 'node:child_process';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { ImageService } from '../../src/gen/debvisor/v1/image_pb.js';
import { QuotaResource } from '../../src/gen/debvisor/v1/options_pb.js';
import { OperationService, OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { sha256Hex, startHttpImageServer, type ImageServer } from '../support/image-server.js';
import { rejection } from '../support/security.js';
import { finished, NO_RATE_LIMITS, used } from '../support/storage.js';
import { startTestingDaemon } from '../support/testing.js';

const run = promisify(execFile);
const T = { timeoutMs: 30_000 };
const canMount = process.getuid?.() === 0;
if (!canMount && process.env.CI === 'true') throw new Error('test/e2e/disk-full.test.ts needs root (tmpfs mount) in CI');

let mountPoint: string;
let daemon: RunningDaemon;
const filler = () => join(mountPoint, 'filler');

/** Writes the filler until the file system refuses (ENOSPC). */
async function fillUp(): Promise<void> {
  const file = await open(filler(), 'w');
  const chunk = Buffer.alloc(256 * 1024, 1);
  try {
    for (;;) await file.write(chunk);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await file.close().catch(() => undefined);
  }
  // The last partial chunk: fill the remaining bytes too.
  const rest = await open(filler(), 'a');
  try {
    for (;;) await rest.write(Buffer.alloc(512, 1));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOSPC') throw err;
  } finally {
    await rest.close().catch(() => undefined);
  }
}

describe.skipIf(!canMount)('the embedded store on a full disk', () => {
  beforeAll(async () => {
    mountPoint = await mkdtemp(join(tmpdir(), 'rpcd-disk-full-'));
    await run('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'tmpfs', mountPoint]);
    daemon = await startTestingDaemon({ config: { store: { embedded: { dir: join(mountPoint, 'store') } } } });
  }, 180_000);

  afterAll(async () => {
    await (daemon as RunningDaemon | undefined)?.cleanup();
    if (mountPoint) {
      await run('umount', [mountPoint]).catch(() => undefined);
      await rm(mountPoint, { recursive: true, force: true });
    }
  });

  it('refuses mutations with UNAVAILABLE and keeps serving reads; with space back, the retry succeeds once', async () => {
    const [access, testing, ops] = await Promise.all([clientFor(AccessService, daemon), clientFor(TestingService, daemon), clientFor(OperationService, daemon)]);
    try {
      await fillUp();
      const bind = () => access.bindRole({ principal: 'user:disk-full', roleName: 'viewer', requestId: 'bind-when-full' }, T);
      const refused = await rejection(bind());
      expect(refused.code, refused.details).toBe(Status.UNAVAILABLE);
      expect(refused.details).toMatch(/trace_id=/);
      const key = await rejection(access.createApiKey({ description: 'full', permissions: ['vm:list'] }, T));
      expect(key.code, key.details).toBe(Status.UNAVAILABLE);
      const operation = await rejection(testing.startTestOperation({ duration: durationFromMs(60_000) }, T));
      expect(operation.code, operation.details).toBe(Status.UNAVAILABLE);

      // Reads still answer, and nothing was half-done.
      expect((await access.whoAmI({}, T)).principalId).not.toBe('');
      expect((await access.listRoleBindings({}, T)).bindings.some((b) => b.principal === 'user:disk-full')).toBe(false);
      expect((await access.listApiKeys({}, T)).apiKeys.some((k) => k.description === 'full')).toBe(false);
      expect((await ops.listOperations({}, T)).operations).toEqual([]);
      expect(daemon.alive()).toBe(true);

      await rm(filler());
      await bind();
      await bind(); // the same request_id: the kept reply, not a second binding
      expect((await access.listRoleBindings({}, T)).bindings.filter((b) => b.principal === 'user:disk-full')).toHaveLength(1);
      // The refused operation held no slot: the whole concurrent-operations quota is free.
      const started = await testing.startTestOperation({ duration: durationFromMs(60_000) }, T);
      await ops.cancelOperation({ operationId: started.operation!.id }, T);
      expect(daemon.logRecords().filter((r) => r.level === 60 || /uncaught|unhandled/i.test(String(r.msg)))).toEqual([]);
    } finally {
      for (const client of [access, testing, ops]) client.close();
    }
  });
});

describe.skipIf(!canMount)('the image library on a full disk', () => {
  let mount: string;
  let server: ImageServer;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    mount = await mkdtemp(join(tmpdir(), 'rpcd-images-full-'));
    await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mount]);
    server = await startHttpImageServer();
    daemon = await startDaemon({ config: { ...NO_RATE_LIMITS, images_dir: join(mount, 'images'), images: { allow_http: true, allowed_networks: ['127.0.0.0/8'] } } });
  }, 180_000);

  afterAll(async () => {
    await (daemon as RunningDaemon | undefined)?.cleanup();
    await (server as ImageServer | undefined)?.close();
    if (mount) {
      await run('umount', [mount]).catch(() => undefined);
      await rm(mount, { recursive: true, force: true });
    }
  });

  /** Every file under the images directory (partial downloads included), recursively. */
  async function filesUnder(dir: string): Promise<string[]> {
    const entries = await readdir(dir, { withFileTypes: true, recursive: true });
    return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
  }

  it('fails an import larger than the free space RESOURCE_EXHAUSTED, leaving no partial file and no quota charged; a small one then succeeds', async () => {
    const [images, ops, access] = await Promise.all([clientFor(ImageService, daemon), clientFor(OperationService, daemon), clientFor(AccessService, daemon)]);
    try {
      const big = randomBytes(16 * 1024 * 1024);
      server.files.set('/big.raw', { body: big });
      const failed = await finished(ops, (await images.importImage({ url: `${server.origin}/big.raw`, sha256: sha256Hex(big), name: 'big', format: 'raw' }, T)).operation);
      expect(failed.state).toBe(OperationState.FAILED);
      expect(failed.error?.code, failed.error?.message).toBe(Status.RESOURCE_EXHAUSTED);
      expect(await filesUnder(join(mount, 'images'))).toEqual([]);
      expect(await used(access, QuotaResource.IMAGES_GB)).toBe(0n);
      expect((await images.listImages({}, T)).images).toEqual([]);

      const small = randomBytes(1024 * 1024);
      server.files.set('/small.raw', { body: small });
      const done = await finished(ops, (await images.importImage({ url: `${server.origin}/small.raw`, sha256: sha256Hex(small), name: 'small', format: 'raw' }, T)).operation);
      expect(done.state, done.error?.message).toBe(OperationState.SUCCEEDED);
      expect(await used(access, QuotaResource.IMAGES_GB)).toBe(1n);
    } finally {
      for (const client of [images, ops, access]) client.close();
    }
  });
});
