// qemu-img for ProvisionVolume: inspect an image file (`info --output=json`), then write it as raw
// into a volume's device or rbd target (`convert -p`), through the exec layer.
// Image files come from users, so inspection is also the safety gate. An image is refused when:
//  - it has a backing file: qemu would read that file too, and it may be anywhere (/etc/shadow) —
//    backing chains are refused outright rather than resolved, so there is no path logic to get wrong;
//  - it is a qcow2 with an external data file (same problem, different field);
//  - it is encrypted (we have no secret to give qemu), or its format is not in the allow-list
//    (default raw and qcow2: vmdk descriptors, for one, can name arbitrary extent files).
// info never lets qemu probe: the format is detected from the file's header by us (format.ts), unsafe
// headers are refused before qemu-img runs, then `info -f <format>` confirms; a declared format (an
// import's) must match what the bytes are. convert always names the source format from info, so the
// bytes are never probed (a raw image whose content looks like qcow2 stays raw).
import { constants as fsConstants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { isAbsolute } from 'node:path';
import { Registry } from 'prom-client';
import { createExecutor, ExecError, ExecUsageError, type ClassifyRule, type Executor, type SpawnEvent } from '../exec.js';
import { progressParser } from '../progress.js';
import { detectImageFormat, HEADER_BYTES } from './format.js';
import { RpcError } from '../../rpc/errors.js';
import type { CallOptions, ProgressFn } from '../storage-backend.js';

export const DEFAULT_QEMU_IMG = '/usr/bin/qemu-img';
export const DEFAULT_IMAGE_FORMATS = ['raw', 'qcow2'] as const;

export interface QemuImgOptions {
  /** Absolute path of qemu-img; default /usr/bin/qemu-img. */
  readonly qemuImgPath?: string;
  /** qemu-img processes at once (conversions are I/O heavy); default 2. */
  readonly maxConcurrent?: number;
  /** Limit for info; default 30 s. */
  readonly defaultTimeoutMs?: number;
  /** Limit for one convert; default 24 h (callers cancel through the operation's signal). */
  readonly convertTimeoutMs?: number;
  /** Formats info accepts; default raw and qcow2. */
  readonly allowedFormats?: readonly string[];
  /**
   * Check that convert() reads the very file version info() approved (see ImageChangedError); default
   * true. Only a qemu-img that sees another filesystem than this process (a test guest) turns it off.
   */
  readonly checkFileVersions?: boolean;
  /**
   * Reads the first `bytes` bytes of an image (fewer when it is shorter) for format detection; default
   * from this process's file system. Only a qemu-img in a test guest, seeing other paths, needs another.
   */
  readonly readHeader?: (path: string, bytes: number) => Promise<Buffer>;
  /** Metrics registry for backend_command_duration_seconds; default a private one. */
  readonly registry?: Registry;
  readonly onSpawn?: (event: SpawnEvent) => void;
}

export interface ImageInfo {
  /** As qemu-img names it: "raw", "qcow2", … (always one of allowedFormats). */
  readonly format: string;
  /** The guest-visible size: what the target volume must hold. */
  readonly virtualSizeBytes: bigint;
  /** Bytes the file takes on disk. */
  readonly actualSizeBytes: bigint;
  /** qcow2 was not closed cleanly (lazy refcounts); the data may be inconsistent. */
  readonly dirty: boolean;
}

export interface ConvertRequest extends CallOptions {
  /** Absolute path of a file that passed info(). */
  readonly source: string;
  /** info().format of that file: never probed again. */
  readonly sourceFormat: string;
  /** An absolute path (LVM device, or a file standing in for one) or an `rbd:pool/image…` target. */
  readonly target: string;
  readonly targetFormat: 'raw';
  /** The target exists already (a device or rbd image made by createVolume): `-n`, do not create it. */
  readonly targetExists: boolean;
  readonly onProgress?: ProgressFn;
  /** Throttle in bytes per second (`-r`), to spare other guests' I/O. */
  readonly rateLimitBytesPerSecond?: number;
  readonly timeoutMs?: number;
}

/** Why an image was refused. `format_mismatch`: the bytes are not in the format the caller declared. */
export type ImageRejection = 'backing_file' | 'data_file' | 'encrypted' | 'format' | 'format_mismatch';

export interface InfoOptions extends CallOptions {
  /** The format the caller says the image is in (an import's `format`): the bytes must be in it. */
  readonly format?: string;
}

/** An image file qemu-img can read but we will not provision from. INVALID_ARGUMENT; the message names no path. */
export class ImageRejectedError extends RpcError {
  constructor(
    readonly reason: ImageRejection,
    message: string,
  ) {
    super('INVALID_ARGUMENT', message);
    this.name = 'ImageRejectedError';
  }
}

/**
 * The image file changed between info() and the end of convert() (replaced, rewritten, touched).
 * What info() approved is no longer what was read — a swapped-in backing or data file could have
 * pulled another file's bytes into the volume — so the conversion counts as failed. ABORTED: retry.
 */
export class ImageChangedError extends RpcError {
  constructor() {
    super('ABORTED', 'the image file changed while it was being provisioned; retry');
    this.name = 'ImageChangedError';
  }
}

/** What identifies one version of a file: a rename swaps dev/ino, any write or chmod moves ctime (which users cannot set back). */
interface FileVersion {
  readonly dev: bigint;
  readonly ino: bigint;
  readonly ctimeNs: bigint;
  readonly size: bigint;
}

async function fileVersion(path: string): Promise<FileVersion | undefined> {
  try {
    const st = await stat(path, { bigint: true });
    return { dev: st.dev, ino: st.ino, ctimeNs: st.ctimeNs, size: st.size };
  } catch {
    return undefined;
  }
}

function sameVersion(a: FileVersion | undefined, b: FileVersion | undefined): boolean {
  return a !== undefined && b !== undefined && a.dev === b.dev && a.ino === b.ino && a.ctimeNs === b.ctimeNs && a.size === b.size;
}

/**
 * The first `bytes` bytes of a regular file. O_NONBLOCK: a FIFO planted where an image should be
 * must not hang the call. Failures read like qemu-img's (ExecError), so callers see one kind of error.
 */
async function readLocalHeader(path: string, bytes: number): Promise<Buffer> {
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new ExecError({ kind: 'not_found', backend: 'qemu-img', command: 'info', stderr: `${path}: No such file or directory`, publicMessage: 'the image file does not exist', cause: err });
    throw new ExecError({ kind: 'failed', backend: 'qemu-img', command: 'info', stderr: `${path}: cannot open: ${code ?? String(err)}`, cause: err });
  }
  try {
    if (!(await handle.stat()).isFile()) throw new ExecError({ kind: 'failed', backend: 'qemu-img', command: 'info', stderr: `${path}: not a regular file` });
    const buffer = Buffer.alloc(bytes);
    let filled = 0;
    while (filled < bytes) {
      const { bytesRead } = await handle.read(buffer, filled, bytes - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return buffer.subarray(0, filled);
  } finally {
    await handle.close();
  }
}

/** How many approved files convert() remembers (an info() whose convert never comes must not grow memory). */
const MAX_APPROVED = 1024;

/** qemu-img 7.2 exits 1 on every failure; these texts are produced for real in test/backends/qemu-img.test.ts. */
export const QEMU_IMG_RULES: readonly ClassifyRule[] = [
  {
    // "qemu-img: Could not open 'x': Could not open 'x': No such file or directory"
    kind: 'not_found',
    code: 1,
    stderr: /No such file or directory/,
    message: 'the image file does not exist',
  },
  {
    kind: 'no_space',
    code: 1,
    stderr: /No space left on device/i,
    message: 'the target has not enough space for the image',
  },
  {
    // "Failed to get shared "write" lock" / "Is another process using the image [x]?"
    kind: 'busy',
    code: 1,
    stderr: /Failed to get .* lock|Is another process using the image/i,
    message: 'the image is in use by another process',
  },
  {
    // -n into a target smaller than the image: "qemu-img: output file is smaller than input file"
    kind: 'failed',
    code: 1,
    stderr: /output file is smaller than input file/i,
    message: "the target volume is smaller than the image's virtual size",
  },
  {
    // The file changed format between info and convert: "Image is not in qcow2 format"
    kind: 'failed',
    code: 1,
    stderr: /Image is not in \S+ format/i,
    message: 'the image file changed while it was being provisioned',
  },
];

function checkSourcePath(path: string, field: string): string {
  // Relative names, and "proto:…" prefixes, would let qemu pick a protocol driver (nbd:, ssh:, json:…):
  // a path starting with "/" is always a plain file to qemu.
  if (typeof path !== 'string' || !isAbsolute(path)) throw new ExecUsageError(`${field} must be an absolute path`);
  return path;
}

function checkTarget(target: string): string {
  if (typeof target === 'string' && (isAbsolute(target) || target.startsWith('rbd:'))) return target;
  throw new ExecUsageError('target must be an absolute path or an rbd: target');
}

function malformed(command: string, what: string): ExecError {
  return new ExecError({ kind: 'failed', backend: 'qemu-img', command, stderr: `unexpected qemu-img output: ${what}` });
}

function byteCount(value: unknown, field: string, command: string): bigint {
  // JSON numbers: exact up to 2^53 bytes (8 PiB), far beyond any image we provision.
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw malformed(command, `${field} is not a byte count`);
  return BigInt(value);
}

function jsonObject(stdout: string, command: string): Record<string, unknown> {
  let doc: Record<string, unknown> | undefined;
  try {
    doc = object(JSON.parse(stdout));
  } catch {
    doc = undefined;
  }
  if (!doc) throw malformed(command, 'not a JSON object');
  return doc;
}

function object(value: unknown): Record<string, unknown> | undefined {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

/**
 * Parses `qemu-img info --output=json` and applies the safety rules in the header.
 * Exported for tests on captured output.
 */
export function parseImageInfo(stdout: string, allowedFormats: readonly string[] = DEFAULT_IMAGE_FORMATS): ImageInfo {
  const doc = jsonObject(stdout, 'info');
  const format = doc.format;
  if (typeof format !== 'string') throw malformed('info', 'no format');
  if (doc['backing-filename'] !== undefined || doc['full-backing-filename'] !== undefined) {
    throw new ImageRejectedError('backing_file', 'the image has a backing file; only standalone images can be provisioned (flatten it with qemu-img convert first)');
  }
  const specific = object(object(doc['format-specific'])?.data);
  if (specific?.['data-file'] !== undefined) {
    throw new ImageRejectedError('data_file', 'the image keeps its data in an external file; only self-contained images can be provisioned');
  }
  // A vmdk (even a single sparse file) may list further extents in its embedded descriptor.
  const extents = specific?.extents;
  if (format === 'vmdk' && (!Array.isArray(extents) || extents.some((extent) => object(extent)?.filename !== doc.filename))) {
    throw new ImageRejectedError('data_file', 'the vmdk image keeps its data in other files; only single-file images can be provisioned');
  }
  if (doc.encrypted === true) throw new ImageRejectedError('encrypted', 'the image is encrypted; provision from an unencrypted image');
  if (!allowedFormats.includes(format)) {
    throw new ImageRejectedError('format', `images in ${JSON.stringify(format)} format are not accepted (allowed: ${allowedFormats.join(', ')})`);
  }
  return {
    format,
    virtualSizeBytes: byteCount(doc['virtual-size'], 'virtual-size', 'info'),
    actualSizeBytes: doc['actual-size'] === undefined ? 0n : byteCount(doc['actual-size'], 'actual-size', 'info'),
    dirty: doc['dirty-flag'] === true,
  };
}

export class QemuImg {
  readonly executor: Executor;
  readonly allowedFormats: readonly string[];
  private readonly convertTimeoutMs: number;
  /** Path → the file version info() approved; convert() refuses a file that is no longer that version. */
  private readonly approved = new Map<string, FileVersion>();
  private readonly checkFileVersions: boolean;
  private readonly readHeader: (path: string, bytes: number) => Promise<Buffer>;

  constructor(options: QemuImgOptions = {}) {
    this.allowedFormats = options.allowedFormats ?? DEFAULT_IMAGE_FORMATS;
    for (const f of this.allowedFormats) if (!/^[a-z0-9]+$/.test(f)) throw new ExecUsageError('allowedFormats must be qemu format names');
    this.convertTimeoutMs = options.convertTimeoutMs ?? 24 * 3600_000;
    this.checkFileVersions = options.checkFileVersions ?? true;
    this.readHeader = options.readHeader ?? readLocalHeader;
    this.executor = createExecutor({
      backend: 'qemu-img',
      binaries: { 'qemu-img': options.qemuImgPath ?? DEFAULT_QEMU_IMG },
      // rbd: targets carry their ceph.conf in the target string (":conf=…"), not in the environment.
      envAllowList: ['PATH'],
      maxConcurrent: options.maxConcurrent ?? 2,
      defaultTimeoutMs: options.defaultTimeoutMs ?? 30_000,
      maxOutputBytes: 1024 * 1024,
      killGraceMs: 5_000,
      registry: options.registry ?? new Registry(),
      onSpawn: options.onSpawn,
    });
  }

  /**
   * Format and sizes of an image file, or ImageRejectedError when it is not safe to provision from:
   * the format is detected from the header (unsafe headers and formats outside the allow-list are
   * refused before qemu-img runs), then `qemu-img info -f <format>` is checked again.
   * This is the inspection an import runs on a downloaded or uploaded file before publishing it.
   */
  async info(path: string, options: InfoOptions = {}): Promise<ImageInfo> {
    const file = checkSourcePath(path, 'image path');
    const before = await fileVersion(file);
    const detected = detectImageFormat(await this.readHeader(file, HEADER_BYTES));
    if (options.format !== undefined && options.format !== detected.format) {
      throw new ImageRejectedError('format_mismatch', `the image is in ${JSON.stringify(detected.format)} format, not the declared ${JSON.stringify(options.format)}`);
    }
    if (detected.unsafe) throw new ImageRejectedError(detected.unsafe.reason, detected.unsafe.message);
    if (!this.allowedFormats.includes(detected.format)) {
      throw new ImageRejectedError('format', `images in ${JSON.stringify(detected.format)} format are not accepted (allowed: ${this.allowedFormats.join(', ')})`);
    }
    const result = await this.executor.run('qemu-img', ['info', '--output=json', '-f', detected.format, file], { signal: options.signal });
    const info = parseImageInfo(this.executor.check(result, QEMU_IMG_RULES).stdout, this.allowedFormats);
    if (info.format !== detected.format) throw malformed('info', `format ${info.format} where ${detected.format} was given`);
    if (!this.checkFileVersions) return info;
    if (before === undefined || !sameVersion(before, await fileVersion(file))) throw new ImageChangedError();
    // Re-inserted so the Map's order is least recently approved first.
    this.approved.delete(file);
    this.approved.set(file, before);
    const oldest = this.approved.keys().next();
    if (this.approved.size > MAX_APPROVED && oldest.done !== true) this.approved.delete(oldest.value);
    return info;
  }

  /**
   * Writes the image into the target as raw, reporting qemu-img's own progress (0–100).
   * Into an existing target (-n) qemu-img writes zeros where the image has none, so nothing of the
   * device's previous content survives (we never pass --target-is-zero).
   * When info() approved this path, the file must still be that version before and after the
   * conversion (ImageChangedError otherwise): what was inspected is what was read.
   */
  async convert(request: ConvertRequest): Promise<void> {
    const source = checkSourcePath(request.source, 'source');
    const approved = this.approved.get(source);
    if (approved && !sameVersion(approved, await fileVersion(source))) throw new ImageChangedError();
    const target = checkTarget(request.target);
    if (!this.allowedFormats.includes(request.sourceFormat)) throw new ExecUsageError('sourceFormat must be one info() returned');
    const args = ['convert', '-p', '-f', request.sourceFormat, '-O', request.targetFormat];
    if (request.targetExists) args.push('-n');
    const rate = request.rateLimitBytesPerSecond;
    if (rate !== undefined) {
      if (!Number.isSafeInteger(rate) || rate <= 0) throw new ExecUsageError('rateLimitBytesPerSecond must be a positive integer');
      args.push('-r', String(rate));
    }
    args.push(source, target);
    const onProgress = request.onProgress;
    const result = await this.executor.run('qemu-img', args, {
      signal: request.signal,
      timeoutMs: request.timeoutMs ?? this.convertTimeoutMs,
      // qemu-img 7.2 prints "    (12.34/100%)\r" on stdout.
      onStdoutChunk: onProgress ? progressParser(onProgress) : undefined,
    });
    this.executor.check(result, QEMU_IMG_RULES);
    if (approved && !sameVersion(approved, await fileVersion(source))) throw new ImageChangedError();
  }
}
