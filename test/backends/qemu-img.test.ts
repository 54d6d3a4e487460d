// QemuImg against the REAL qemu-img (Debian qemu-utils 7.2) on files in a temp dir: format
// detection, the refusal of unsafe images (backing files, external data files, encryption,
// formats outside the allow-list), conversion into a file standing in for an LV device (with
// stale content that must not survive), progress from qemu-img's own output, and cancellation.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecUsageError, type ExecError } from '../../src/backends/exec.js';
import { ImageChangedError, ImageRejectedError, QemuImg } from '../../src/backends/qemu-img/qemu-img.js';
import { toStatus } from '../../src/rpc/errors.js';
import { rejection } from '../support/rejection.js';

const QEMU_IMG = '/usr/bin/qemu-img';
const MiB = 1024 * 1024;
let dir: string;
let spawned = 0;
const qemuImg = new QemuImg({ onSpawn: () => spawned++ });
/** 8 MiB: 4 MiB of random data, then 4 MiB of zeros (the part qemu-img must write as zeros into a used device). */
let rawData: Buffer;

const path = (name: string) => join(dir, name);
const qi = (...args: string[]) => execFileSync(QEMU_IMG, args, { stdio: ['ignore', 'ignore', 'pipe'] });

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'debvisor-qemu-img-'));
  rawData = Buffer.concat([randomBytes(4 * MiB), Buffer.alloc(4 * MiB)]);
  writeFileSync(path('disk.raw'), rawData);
  writeFileSync(path('disk.raw.copy'), rawData);
  qi('convert', '-f', 'raw', '-O', 'qcow2', path('disk.raw'), path('disk.qcow2'));
  qi('create', '-f', 'qcow2', '-b', path('disk.qcow2'), '-F', 'qcow2', path('overlay.qcow2'));
  qi('create', '-f', 'qcow2', '-b', '/etc/passwd', '-F', 'raw', path('evil-backing.qcow2'));
  qi('create', '-f', 'qcow2', '-o', `data_file=${path('outside.raw')}`, path('data-file.qcow2'), '1M');
  // Legacy AES: LUKS creation benchmarks its key derivation and fails under load ("Unable to get accurate CPU usage").
  qi('create', '--object', 'secret,id=sec0,data=abc', '-f', 'qcow2', '-o', 'encrypt.format=aes,encrypt.key-secret=sec0', path('encrypted.qcow2'), '1M');
  qi('create', '-f', 'vmdk', path('disk.vmdk'), '1M');
  // The cases, literally: a backing file named relative to nothing, and an external data file.
  writeFileSync(path('base.raw'), Buffer.alloc(MiB));
  qi('create', '-f', 'qcow2', '-b', path('base.raw'), '-F', 'raw', path('x.qcow2'));
  qi('create', '-f', 'qcow2', '-o', `data_file=${path('x-data.raw')}`, path('x-data.qcow2'), '1M');
  // A vmdk descriptor naming an extent file (monolithicFlat), and a VDI.
  qi('create', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', path('flat.vmdk'), '1M');
  qi('create', '-f', 'vdi', path('disk.vdi'), '1M');
  // A "raw" disk whose first bytes are a qcow2 header pointing at /etc/passwd: what a guest can write to its own disk.
  writeFileSync(path('guest-written.raw'), Buffer.concat([readFileSync(path('evil-backing.qcow2')), Buffer.alloc(MiB)]));
  execFileSync('mkfifo', [path('fifo.raw')]);
  writeFileSync(path('corrupt.qcow2'), Buffer.from('QFI\xfb\x00\x00\x00\x03garbage', 'latin1'));
  mkdirSync(path('a-directory'));
});

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('QemuImg.info on real files', () => {
  it('detects qcow2 and raw with their sizes', async () => {
    expect(await qemuImg.info(path('disk.qcow2'))).toMatchObject({ format: 'qcow2', virtualSizeBytes: 8n * BigInt(MiB), dirty: false });
    const raw = await qemuImg.info(path('disk.raw'));
    expect(raw).toMatchObject({ format: 'raw', virtualSizeBytes: 8n * BigInt(MiB) });
    expect(raw.actualSizeBytes).toBeGreaterThan(0n);
  });

  it.each([
    ['overlay.qcow2', 'backing_file'],
    ['evil-backing.qcow2', 'backing_file'],
    ['data-file.qcow2', 'data_file'],
    ['encrypted.qcow2', 'encrypted'],
    ['disk.vmdk', 'format'],
  ])('refuses %s (%s) as INVALID_ARGUMENT without naming a path', async (file, reason) => {
    const err = await rejection(qemuImg.info(path(file)));
    expect(err).toBeInstanceOf(ImageRejectedError);
    expect(err).toMatchObject({ reason });
    const status = toStatus(err, 't');
    expect(status.code).toBe(Status.INVALID_ARGUMENT);
    expect(status.details).not.toContain('/');
  });

  it.each([
    ['x.qcow2', 'backing_file'],
    ['x-data.qcow2', 'data_file'],
    ['evil-backing.qcow2', 'backing_file'],
    ['guest-written.raw', 'backing_file'],
    ['encrypted.qcow2', 'encrypted'],
    ['disk.vmdk', 'format'],
    ['disk.vdi', 'format'],
  ])('refuses %s (%s) from its header, before qemu-img runs at all', async (file, reason) => {
    const before = spawned;
    expect(await rejection(qemuImg.info(path(file)))).toMatchObject({ name: 'ImageRejectedError', reason });
    expect(spawned).toBe(before);
  });

  it('runs qemu-img info with -f and the detected format, never letting it probe', async () => {
    const calls: string[][] = [];
    const watched = new QemuImg({ onSpawn: (event) => calls.push([...event.args]) });
    await watched.info(path('disk.qcow2'));
    await watched.info(path('disk.raw'));
    expect(calls).toEqual([
      ['info', '--output=json', '-f', 'qcow2', path('disk.qcow2')],
      ['info', '--output=json', '-f', 'raw', path('disk.raw')],
    ]);
  });

  it('refuses bytes that are not in the declared format (an import that says raw but sends qcow2, and the reverse)', async () => {
    expect(await rejection(qemuImg.info(path('disk.qcow2'), { format: 'raw' }))).toMatchObject({ reason: 'format_mismatch' });
    expect(await rejection(qemuImg.info(path('disk.raw'), { format: 'qcow2' }))).toMatchObject({ reason: 'format_mismatch' });
    expect(await qemuImg.info(path('disk.qcow2'), { format: 'qcow2' })).toMatchObject({ format: 'qcow2' });
  });

  it('refuses a vmdk descriptor naming other files even where vmdk is allowed; accepts a single-file vmdk and a vdi when configured', async () => {
    const permissive = new QemuImg({ allowedFormats: ['raw', 'qcow2', 'vmdk', 'vdi'], onSpawn: () => spawned++ });
    const before = spawned;
    expect(await rejection(permissive.info(path('flat.vmdk')))).toMatchObject({ name: 'ImageRejectedError', reason: 'data_file' });
    expect(spawned).toBe(before);
    expect(await permissive.info(path('disk.vmdk'))).toMatchObject({ format: 'vmdk', virtualSizeBytes: BigInt(MiB) });
    expect(await permissive.info(path('disk.vdi'))).toMatchObject({ format: 'vdi', virtualSizeBytes: BigInt(MiB) });
  });

  it('does not hang on a FIFO planted where an image should be', async () => {
    expect(await rejection(qemuImg.info(path('fifo.raw')))).toMatchObject({ name: 'ExecError', kind: 'failed' });
  });

  it('accepts a configured extra format', async () => {
    expect((await new QemuImg({ allowedFormats: ['raw', 'qcow2', 'vmdk'] }).info(path('disk.vmdk'))).format).toBe('vmdk');
  });

  it('reports missing, unreadable and corrupt files with typed errors that hide stderr', async () => {
    const missing = await rejection(qemuImg.info(path('nope.qcow2')));
    // Found missing when its header is read for format detection, before qemu-img runs.
    expect(missing).toMatchObject({ name: 'ExecError', kind: 'not_found' });
    expect(toStatus(missing, 't')).toMatchObject({ code: Status.NOT_FOUND, details: 'the image file does not exist (trace_id=t)' });
    for (const file of ['a-directory', 'corrupt.qcow2']) {
      const err = await rejection(qemuImg.info(path(file)));
      expect(err).toMatchObject({ name: 'ExecError', kind: 'failed' });
      expect((err as ExecError).stderr).toContain(file);
      expect(toStatus(err, 't').details).not.toContain(file);
    }
  });

  it('refuses relative and protocol-looking paths before spawning', async () => {
    const before = spawned;
    for (const bad of ['disk.qcow2', 'nbd:localhost:10809', 'json:{"driver":"file","filename":"/etc/shadow"}', '']) {
      expect(await rejection(qemuImg.info(bad))).toBeInstanceOf(ExecUsageError);
      expect(await rejection(qemuImg.convert({ source: bad, sourceFormat: 'raw', target: path('t'), targetFormat: 'raw', targetExists: false }))).toBeInstanceOf(ExecUsageError);
    }
    expect(await rejection(qemuImg.convert({ source: path('disk.raw'), sourceFormat: 'raw', target: 'ssh://host/x', targetFormat: 'raw', targetExists: false }))).toBeInstanceOf(
      ExecUsageError,
    );
    expect(await rejection(qemuImg.convert({ source: path('disk.raw'), sourceFormat: 'vmdk', target: path('t'), targetFormat: 'raw', targetExists: false }))).toBeInstanceOf(
      ExecUsageError,
    );
    expect(spawned).toBe(before);
  });
});

describe('QemuImg.convert on real files', () => {
  it('writes a qcow2 image into an existing "device" with -n, zeroing stale content, with progress to 100', async () => {
    // A used LV: every byte 0xAA. The image's zero half must not leave any of it behind.
    writeFileSync(path('device'), Buffer.alloc(8 * MiB, 0xaa));
    const progress: number[] = [];
    await qemuImg.convert({ source: path('disk.qcow2'), sourceFormat: 'qcow2', target: path('device'), targetFormat: 'raw', targetExists: true, onProgress: (p) => progress.push(p) });
    expect(readFileSync(path('device')).equals(rawData)).toBe(true);
    expect(progress.at(-1)).toBe(100);
    expect(progress).toEqual([...new Set(progress)].sort((a, b) => a - b));
  });

  it('creates a new raw target file when told it does not exist', async () => {
    await qemuImg.convert({ source: path('disk.qcow2'), sourceFormat: 'qcow2', target: path('new.raw'), targetFormat: 'raw', targetExists: false });
    expect(readFileSync(path('new.raw')).equals(rawData)).toBe(true);
  });

  it('uses the format from info, never probing again: a qcow2 file converted as raw stays its bytes', async () => {
    await qemuImg.convert({ source: path('evil-backing.qcow2'), sourceFormat: 'raw', target: path('as-raw'), targetFormat: 'raw', targetExists: false });
    const bytes = readFileSync(path('as-raw'));
    expect(bytes.subarray(0, 4).toString('latin1')).toBe('QFI\xfb');
    expect(bytes.includes(Buffer.from(readFileSync('/etc/passwd', 'utf8').slice(0, 16)))).toBe(false);
  });

  it('refuses a target smaller than the image', async () => {
    writeFileSync(path('small-device'), Buffer.alloc(MiB));
    const err = await rejection(qemuImg.convert({ source: path('disk.raw'), sourceFormat: 'raw', target: path('small-device'), targetFormat: 'raw', targetExists: true }));
    expect(err).toMatchObject({ name: 'ExecError', kind: 'failed' });
    expect(toStatus(err, 't').details).toBe("the target volume is smaller than the image's virtual size (trace_id=t)");
  });

  it('refuses an image that changed after info approved it, before and after converting', async () => {
    writeFileSync(path('changing.raw'), rawData);
    const changing = new QemuImg();
    const request = { source: path('changing.raw'), sourceFormat: 'raw', target: path('device3'), targetFormat: 'raw' as const, targetExists: false };
    await changing.info(path('changing.raw'));
    // Rewritten in place (same inode, new ctime) after the inspection.
    writeFileSync(path('changing.raw'), rawData);
    const before = await rejection(changing.convert(request));
    expect(before).toBeInstanceOf(ImageChangedError);
    expect(toStatus(before, 't').code).toBe(Status.ABORTED);
    // Swapped during the conversion: the result is refused afterwards.
    await changing.info(path('changing.raw'));
    const during = await rejection(
      changing.convert({
        ...request,
        rateLimitBytesPerSecond: 16 * MiB,
        onProgress: (p) => {
          if (p > 0 && p < 100) renameSync(path('disk.raw.copy'), path('changing.raw'));
        },
      }),
    );
    expect(during).toBeInstanceOf(ImageChangedError);
    // A file nobody inspected is converted as asked (the caller vouches for it).
    await new QemuImg().convert({ ...request, target: path('device4') });
  });

  it('reports intermediate progress and stops promptly when cancelled', async () => {
    writeFileSync(path('device2'), Buffer.alloc(8 * MiB));
    const controller = new AbortController();
    const progress: number[] = [];
    const started = performance.now();
    // 8 MiB at 2 MiB/s would take 4 s; we cancel at the first progress above 0.
    const err = await rejection(
      qemuImg.convert({
        source: path('disk.raw'),
        sourceFormat: 'raw',
        target: path('device2'),
        targetFormat: 'raw',
        targetExists: true,
        rateLimitBytesPerSecond: 2 * MiB,
        signal: controller.signal,
        onProgress: (p) => {
          progress.push(p);
          if (p > 0) controller.abort();
        },
      }),
    );
    expect(err).toMatchObject({ name: 'ExecError', kind: 'cancelled' });
    expect(toStatus(err, 't').code).toBe(Status.CANCELLED);
    expect(performance.now() - started).toBeLessThan(3_000);
    expect(progress.some((p) => p > 0 && p < 100)).toBe(true);
    expect(qemuImg.executor.stats.running).toBe(0);
  });
});
