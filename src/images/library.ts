// The image library of this node: a content-addressed cache of image files in
// `<images_dir>/sha256/<digest>`, with one store record per image (digest, size, format,
// source, owner) and one per name (alias → digest).
//
// An import downloads into `<images_dir>/sha256/.partial/<digest>` (the same file system,
// so publishing is an atomic rename), checks the SHA-256 (the downloader does, while
// streaming), inspects the file with qemu-img (format allow-list, no backing or data file),
// charges the owner's images_gb, and only then renames it into place and writes the record.
// A digest already present is a cache hit: no download. Imports of one digest on this daemon
// share one download (later ones wait for the first). The files are this node's, so the
// records are per node too; two daemons of one node sharing an images directory would each
// download once (not deduplicated across daemons).
import { createHash, randomUUID } from 'node:crypto';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { Counter, type Registry } from 'prom-client';
import { RpcError } from '../rpc/errors.js';
import type { QuotaManager } from '../quota/manager.js';
import { GIB, gibOf } from '../quota/units.js';
import { ImageFetchError } from './errors.js';
import type { DownloadRequest as FetchRequest, DownloadResult, FetchPolicy } from './fetch.js';
import type { ImageAliasRecord, ImageRecord } from '../store/records.js';
import { retryOnConflict } from '../store/repository.js';
import type { Repositories } from '../store/repositories.js';
import { DIGEST_PREFIX, type ImageRef } from './names.js';

/** Where a download may go (the SSRF guard's settings); see src/images/fetch.ts. */
/** What the library asks of a download (src/images/fetch.ts implements it). */
export type DownloadRequest = Pick<FetchRequest, 'url' | 'expectedSha256' | 'partialPath' | 'maxBytes' | 'policy' | 'signal' | 'onProgress' | 'onBytesReceived'>;
export type { DownloadResult };

/** Downloads a URL into a file, checking its digest while streaming (src/images/fetch.ts). */
export type Downloader = (request: DownloadRequest) => Promise<DownloadResult>;

/** qemu-img info as the library needs it: throws when the image is not safe to use. */
export interface ImageInspector {
  info(path: string, options?: { signal?: AbortSignal }): Promise<{ readonly format: string; readonly virtualSizeBytes: bigint }>;
}

export interface ImageLibraryOptions {
  readonly repos: Pick<Repositories, 'images' | 'imageAliases'>;
  readonly node: string;
  readonly imagesDir: () => string;
  readonly inspector: ImageInspector;
  readonly quotas: Pick<QuotaManager, 'consume' | 'release' | 'view'>;
  readonly download: Downloader;
  /** Files kept beside a partial download (the resume validator), removed with it. */
  readonly partialCompanions?: (partialPath: string) => readonly string[];
  readonly downloadSettings: () => { readonly policy: FetchPolicy; readonly maxBytes: number };
  readonly registry: Registry;
  readonly log: Logger;
}

export interface UploadRequest {
  readonly sha256: string;
  readonly name: string;
  readonly format: string;
  readonly replaceAlias: boolean;
  readonly owner: string;
  /** Announced by the caller (0: unknown): refused at once when over the cap. */
  readonly sizeBytes: number;
}

export interface ImportRequest {
  readonly url: string;
  readonly sha256: string;
  /** Empty: no alias. */
  readonly name: string;
  /** Empty: any allowed format. */
  readonly format: string;
  readonly replaceAlias: boolean;
  readonly owner: string;
}

/** An image with its names, as the service shows it. */
export interface LibraryImage {
  readonly record: ImageRecord;
  readonly aliases: string[];
}

export type ImportOutcome = 'downloaded' | 'cache_hit' | 'joined';

/** How an import runs: its signal, and where its progress goes (bytes while downloading). */
export interface ImportRun {
  readonly signal: AbortSignal;
  readonly onProgress: (percent: number, stage: string, bytes?: { done: number; total?: number | undefined }) => void;
}

/** A URL as the image record keeps it: no query or fragment, which may carry a signature or token. */
function withoutQuery(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.origin}${parsed.pathname}`;
  } catch {
    return '';
  }
}

function isShutdown(signal: AbortSignal): boolean {
  return signal.aborted && signal.reason instanceof RpcError && signal.reason.code === 'UNAVAILABLE';
}

/** Resolves when `promise` settles (either way) or rejects when `signal` aborts. */
async function settledOrAborted(promise: Promise<unknown>, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted();
  let onAbort: (() => void) | undefined;
  try {
    await Promise.race([
      promise.then(
        () => undefined,
        () => undefined,
      ),
      new Promise<never>((_, reject) => {
        onAbort = () => reject(signal.reason as Error);
        signal.addEventListener('abort', onAbort, { once: true });
      }),
    ]);
  } finally {
    if (onAbort) signal.removeEventListener('abort', onAbort);
  }
}

export class ImageLibrary {
  /** Digest → the download running on this daemon. */
  private readonly downloads = new Map<string, Promise<ImageRecord>>();
  /** Digest → provisionings reading the file now. */
  private readonly uses = new Map<string, number>();
  /** Digests a DeleteImage is removing: no new use may start. */
  private readonly deleting = new Set<string>();
  private readonly metrics;

  constructor(private readonly options: ImageLibraryOptions) {
    const registers = [options.registry];
    this.metrics = {
      bytes: new Counter({ name: 'image_download_bytes_total', help: 'Bytes of image bodies downloaded by ImportImage (resumed parts count once).', registers }),
      imports: new Counter({
        name: 'image_imports_total',
        help: 'Finished imports, by result: downloaded, cache_hit (digest already present), joined (waited for a concurrent import), failed.',
        labelNames: ['result'] as const,
        registers,
      }),
      uploads: new Counter({
        name: 'image_uploads_total',
        help: 'Finished uploads (UploadImage), by result: stored, cache_hit (digest already present). Failures are not counted here.',
        labelNames: ['result'] as const,
        registers,
      }),
      cacheHits: new Counter({ name: 'image_cache_hits_total', help: 'Imports and provisionings served from an image already in the library.', registers }),
    };
  }

  get node(): string {
    return this.options.node;
  }

  /** The published file of a digest. */
  pathOf(sha256: string): string {
    return join(this.options.imagesDir(), 'sha256', sha256);
  }

  /** The file of a digest relative to the images directory (what ProvisionVolume's image_path takes). */
  relativePathOf(sha256: string): string {
    return `sha256/${sha256}`;
  }

  private partialPathOf(sha256: string): string {
    return join(this.options.imagesDir(), 'sha256', '.partial', sha256);
  }

  private async filePresent(sha256: string): Promise<boolean> {
    try {
      return (await stat(this.pathOf(sha256))).isFile();
    } catch {
      return false;
    }
  }

  // ---- reads ---------------------------------------------------------------------------

  private async aliases(): Promise<ImageAliasRecord[]> {
    return (await this.options.repos.imageAliases.list({ pageSize: 0, under: [this.node] })).items.map((v) => v.value);
  }

  /** The digest an image reference names; undefined for an alias nobody holds. */
  async digestOf(ref: ImageRef): Promise<string | undefined> {
    if (ref.kind === 'digest') return ref.sha256;
    return (await this.options.repos.imageAliases.get([this.node, ref.name]))?.value.sha256;
  }

  /** The image a reference names, or NOT_FOUND. */
  async require(ref: ImageRef): Promise<LibraryImage> {
    const sha256 = await this.digestOf(ref);
    const record = sha256 === undefined ? undefined : (await this.options.repos.images.get([this.node, sha256]))?.value;
    if (!record) throw new RpcError('NOT_FOUND', `image ${ref.kind === 'digest' ? DIGEST_PREFIX + ref.sha256 : ref.name} not found on node ${this.node}`);
    const aliases = (await this.aliases()).filter((a) => a.sha256 === record.sha256).map((a) => a.name);
    return { record, aliases: aliases.sort() };
  }

  /** Every image of this node, ordered by digest. */
  async list(): Promise<LibraryImage[]> {
    const [images, aliases] = await Promise.all([this.options.repos.images.list({ pageSize: 0, under: [this.node] }), this.aliases()]);
    return images.items
      .map(({ value }) => ({ record: value, aliases: aliases.filter((a) => a.sha256 === value.sha256).map((a) => a.name).sort() }))
      .sort((a, b) => (a.record.sha256 < b.record.sha256 ? -1 : 1));
  }

  // ---- aliases ---------------------------------------------------------------------------

  /** Refuses at call time a name that points at another digest when re-pointing was not asked for. */
  async checkAlias(name: string, sha256: string, replace: boolean, field: string): Promise<void> {
    const current = (await this.options.repos.imageAliases.get([this.node, name]))?.value;
    if (current && current.sha256 !== sha256 && !replace && (await this.options.repos.images.get([this.node, current.sha256]))) {
      throw new RpcError('ALREADY_EXISTS', `${field}: image name "${name}" already points at ${DIGEST_PREFIX}${current.sha256}; set replace_alias to re-point it`);
    }
  }

  /** Points `name` at `sha256` (compare-and-swap on the alias key). */
  async setAlias(name: string, sha256: string, replace: boolean): Promise<void> {
    const id = [this.node, name];
    await retryOnConflict(async () => {
      const current = await this.options.repos.imageAliases.get(id);
      if (current?.value.sha256 === sha256) return;
      // A name left pointing at a deleted image is free.
      if (current && !replace && (await this.options.repos.images.get([this.node, current.value.sha256]))) {
        throw new RpcError('ALREADY_EXISTS', `image name "${name}" already points at ${DIGEST_PREFIX}${current.value.sha256}; set replace_alias to re-point it`);
      }
      const record: ImageAliasRecord = { schema_version: 1, node: this.node, name, sha256, updated_at: new Date().toISOString() };
      if (current) await this.options.repos.imageAliases.update(id, record, current.modRevision);
      else await this.options.repos.imageAliases.create(id, record);
    });
  }

  // ---- import ----------------------------------------------------------------------------

  /**
   * Makes the image available (downloading it unless present or being downloaded) and gives it
   * its name. Resolves with the record and how it was obtained.
   */
  async import(
    request: ImportRequest,
    run: ImportRun,
  ): Promise<{ record: ImageRecord; outcome: ImportOutcome }> {
    let outcome: ImportOutcome = 'cache_hit';
    let record: ImageRecord | undefined;
    for (;;) {
      run.signal.throwIfAborted();
      const present = await this.presentRecord(request.sha256);
      if (present) {
        record = present;
        break;
      }
      const running = this.downloads.get(request.sha256);
      if (running) {
        // Another import of this digest is downloading: wait for it, then look again (it may have failed).
        run.onProgress(0, 'waiting for another import of this digest');
        outcome = 'joined';
        await settledOrAborted(running, run.signal);
        continue;
      }
      const download = this.downloadAndPublish(request, run);
      this.downloads.set(request.sha256, download);
      try {
        record = await download;
        outcome = 'downloaded';
      } catch (err) {
        this.metrics.imports.inc({ result: 'failed' });
        throw err;
      } finally {
        this.downloads.delete(request.sha256);
      }
      break;
    }
    if (outcome !== 'downloaded') this.metrics.cacheHits.inc();
    this.metrics.imports.inc({ result: outcome });
    if (request.name) {
      // In use while it is named: a DeleteImage now would leave the name pointing at nothing.
      const release = this.use(request.sha256);
      try {
        if (!(await this.presentRecord(request.sha256))) throw new RpcError('ABORTED', `image ${DIGEST_PREFIX}${request.sha256} was deleted while it was being imported; retry`);
        await this.setAlias(request.name, request.sha256, request.replaceAlias);
      } finally {
        release();
      }
    }
    run.onProgress(100, outcome === 'downloaded' ? 'published' : 'already in the library', { done: record.size_bytes, total: record.size_bytes });
    return { record, outcome };
  }

  /** Bytes the owner's images_gb quota still has room for (Infinity when unlimited). */
  private async roomOf(owner: string): Promise<number> {
    const view = (await this.options.quotas.view(owner)).find((v) => v.resource === 'images_gb');
    if (!view || view.unlimited) return Number.POSITIVE_INFINITY;
    return Math.max(0, view.limit - view.used) * Number(GIB);
  }

  /**
   * Call-time check of an import: RESOURCE_EXHAUSTED when the digest would have to be downloaded
   * and the owner's images_gb quota is used up (a cache hit charges nothing, so it passes).
   */
  async checkRoom(owner: string, sha256: string): Promise<void> {
    if (await this.presentRecord(sha256)) return;
    if ((await this.roomOf(owner)) <= 0) throw new RpcError('RESOURCE_EXHAUSTED', `quota exceeded: images_gb of ${owner} is used up; delete images or ask for a higher limit`);
  }

  /** The record of a digest whose file is in place; a record whose file went missing counts as absent. */
  private async presentRecord(sha256: string): Promise<ImageRecord | undefined> {
    const record = (await this.options.repos.images.get([this.node, sha256]))?.value;
    return record && (await this.filePresent(sha256)) ? record : undefined;
  }

  private async downloadAndPublish(request: ImportRequest, run: ImportRun): Promise<ImageRecord> {
    const { sha256 } = request;
    const partial = this.partialPathOf(sha256);
    await mkdir(join(this.options.imagesDir(), 'sha256', '.partial'), { recursive: true, mode: 0o750 });
    const settings = this.options.downloadSettings();
    let charged = 0;
    try {
      // The download stops where the owner's images_gb quota would: no 50 GiB fetched for a 1 GiB quota.
      const room = await this.roomOf(request.owner);
      if (room <= 0) throw new RpcError('RESOURCE_EXHAUSTED', `quota exceeded: images_gb of ${request.owner} is used up`);
      const maxBytes = Math.min(settings.maxBytes, room);
      run.onProgress(0, 'connecting');
      const result = await this.options.download({
        url: request.url,
        expectedSha256: sha256,
        partialPath: partial,
        maxBytes,
        policy: settings.policy,
        signal: run.signal,
        onBytesReceived: (bytes) => this.metrics.bytes.inc(bytes),
        onProgress: (received, total) => {
          const percent = total ? (received / total) * 95 : 0;
          run.onProgress(percent, total ? `downloading ${received} of ${total} bytes` : `downloading ${received} bytes`, { done: received, total });
        },
      }).catch((err: unknown) => {
        if (err instanceof ImageFetchError && err.failure === 'too_large' && maxBytes < settings.maxBytes) {
          throw new RpcError('RESOURCE_EXHAUSTED', `quota exceeded: the image is larger than the ${Math.floor(maxBytes / Number(GIB))} GiB left of the images_gb quota of ${request.owner}`);
        }
        throw err;
      });
      // The downloader checks the digest while streaming; a second look costs nothing and guards its contract.
      if (result.sha256 !== sha256) throw new RpcError('FAILED_PRECONDITION', `sha256: the download's digest is ${result.sha256}, not the expected ${sha256}; nothing was published`);
      return await this.publish(partial, { bytes: result.bytes, source: 'url', sourceUrl: withoutQuery(request.url) }, request, run, (gb) => (charged = gb));
    } catch (err) {
      if (charged > 0) await this.options.quotas.release(request.owner, 'images_gb', charged).catch(() => undefined);
      // A daemon stopping keeps what it has so far: the resumed operation continues it with a Range request.
      if (!isShutdown(run.signal)) {
        for (const file of [partial, ...(this.options.partialCompanions?.(partial) ?? [])]) await rm(file, { force: true });
      }
      throw err;
    }
  }

  /**
   * The end of every way in: inspects the verified file at `partial`, charges the owner's images_gb
   * (reported through `charged`, for the caller to give back if something later fails) and renames
   * it into place with its record.
   */
  private async publish(
    partial: string,
    source: { bytes: number; source: ImageRecord['source']; sourceUrl: string },
    request: { sha256: string; format: string; owner: string },
    run: ImportRun,
    charged: (gb: number) => void,
  ): Promise<ImageRecord> {
    const { sha256 } = request;
    run.onProgress(96, 'inspecting');
    const info = await this.options.inspector.info(partial, { signal: run.signal });
    if (request.format && info.format !== request.format) {
      throw new RpcError('FAILED_PRECONDITION', `format: the image is ${info.format}, not ${request.format}; nothing was published`);
    }
    const gb = gibOf(BigInt(source.bytes));
    if (gb > 0) {
      await this.options.quotas.consume(request.owner, 'images_gb', gb);
      charged(gb);
    }
    // A record left behind by an image whose file went missing held its owner's quota: give it back.
    const stale = await this.options.repos.images.get([this.node, sha256]);
    const record: ImageRecord = {
      schema_version: 1,
      node: this.node,
      sha256,
      size_bytes: source.bytes,
      format: info.format,
      virtual_size_bytes: Number(info.virtualSizeBytes),
      source: source.source,
      source_url: source.sourceUrl,
      owner: request.owner,
      quota_gb: gb,
      created_at: new Date().toISOString(),
    };
    run.onProgress(98, 'publishing');
    await rename(partial, this.pathOf(sha256));
    for (const file of this.options.partialCompanions?.(partial) ?? []) await rm(file, { force: true });
    await this.options.repos.images.put([this.node, sha256], record);
    if (stale && stale.value.quota_gb > 0) await this.options.quotas.release(stale.value.owner, 'images_gb', stale.value.quota_gb);
    this.options.log.info({ sha256, bytes: source.bytes, source: source.source, format: info.format }, 'image published');
    return record;
  }

  // ---- upload ----------------------------------------------------------------------------------

  /**
   * Stores an uploaded image: the chunks go to a partial file of their own (an import of the same
   * digest keeps its own), hashed as they arrive and capped by images.max_bytes and the owner's
   * quota; then the same checks and publication as an import. A digest already present is a cache
   * hit (the chunks are not read).
   */
  async upload(request: UploadRequest, chunks: AsyncIterable<Uint8Array>, signal: AbortSignal): Promise<{ record: ImageRecord; outcome: ImportOutcome }> {
    const run: ImportRun = { signal, onProgress: () => undefined };
    let record = await this.presentRecord(request.sha256);
    let outcome: ImportOutcome = 'cache_hit';
    if (!record) {
      const room = await this.roomOf(request.owner);
      const maxBytes = Math.min(this.options.downloadSettings().maxBytes, room);
      const limitText = () => (maxBytes < this.options.downloadSettings().maxBytes ? `the ${Math.floor(maxBytes / Number(GIB))} GiB left of the images_gb quota` : `images.max_bytes (${maxBytes} bytes)`);
      if (room <= 0) throw new RpcError('RESOURCE_EXHAUSTED', `quota exceeded: images_gb of ${request.owner} is used up`);
      if (request.sizeBytes > maxBytes) throw new RpcError('RESOURCE_EXHAUSTED', `header.size_bytes: ${request.sizeBytes} bytes is more than ${limitText()}`);
      await mkdir(join(this.options.imagesDir(), 'sha256', '.partial'), { recursive: true, mode: 0o750 });
      const partial = `${this.partialPathOf(request.sha256)}.upload-${randomUUID()}`;
      let charged = 0;
      try {
        const hash = createHash('sha256');
        let bytes = 0;
        const file = await open(partial, 'wx', 0o640);
        try {
          for await (const chunk of chunks) {
            signal.throwIfAborted();
            bytes += chunk.length;
            if (bytes > maxBytes) throw new RpcError('RESOURCE_EXHAUSTED', `the upload is larger than ${limitText()}; nothing was published`);
            hash.update(chunk);
            await file.write(chunk);
          }
        } finally {
          await file.close();
        }
        const digest = hash.digest('hex');
        if (digest !== request.sha256) throw new RpcError('FAILED_PRECONDITION', `sha256: the uploaded file has SHA-256 ${digest}, not the expected ${request.sha256}; nothing was published`);
        // An import of the same digest may have published it meanwhile: ours is then not needed.
        record = await this.presentRecord(request.sha256);
        if (record) await rm(partial, { force: true });
        else {
          record = await this.publish(partial, { bytes, source: 'upload', sourceUrl: '' }, { ...request, format: request.format }, run, (gb) => (charged = gb));
          outcome = 'downloaded';
        }
      } catch (err) {
        if (charged > 0) await this.options.quotas.release(request.owner, 'images_gb', charged).catch(() => undefined);
        await rm(partial, { force: true });
        throw err;
      }
    }
    if (outcome === 'cache_hit') this.metrics.cacheHits.inc();
    this.metrics.uploads.inc({ result: outcome === 'downloaded' ? 'stored' : outcome });
    if (request.name) {
      const release = this.use(request.sha256);
      try {
        if (!(await this.presentRecord(request.sha256))) throw new RpcError('ABORTED', `image ${DIGEST_PREFIX}${request.sha256} was deleted while it was being uploaded; retry`);
        await this.setAlias(request.name, request.sha256, request.replaceAlias);
      } finally {
        release();
      }
    }
    return { record, outcome };
  }

  // ---- uses and deletion ---------------------------------------------------------------------

  /** Marks the image in use (a provisioning reads it) until the returned function is called. */
  use(sha256: string): () => void {
    if (this.deleting.has(sha256)) throw new RpcError('FAILED_PRECONDITION', `image ${DIGEST_PREFIX}${sha256} is being deleted`);
    this.uses.set(sha256, (this.uses.get(sha256) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.uses.get(sha256) ?? 1) - 1;
      if (left <= 0) this.uses.delete(sha256);
      else this.uses.set(sha256, left);
    };
  }

  /** Counts a provisioning from an image already in the library. */
  countCacheHit(): void {
    this.metrics.cacheHits.inc();
  }

  /** Removes one alias; the image stays. */
  async deleteAlias(name: string): Promise<LibraryImage> {
    const current = await this.options.repos.imageAliases.get([this.node, name]);
    if (!current) throw new RpcError('NOT_FOUND', `image ${name} not found on node ${this.node}`);
    const image = await this.require({ kind: 'digest', sha256: current.value.sha256 });
    await this.options.repos.imageAliases.delete([this.node, name], current.modRevision);
    return { record: image.record, aliases: image.aliases.filter((a) => a !== name) };
  }

  /**
   * Removes the image, its names and its file, and gives its images_gb back to its owner.
   * FAILED_PRECONDITION while an import downloads it or a provisioning reads it.
   */
  async delete(ref: ImageRef): Promise<LibraryImage> {
    const sha256 = await this.digestOf(ref);
    if (sha256 !== undefined && this.downloads.has(sha256)) {
      throw new RpcError('FAILED_PRECONDITION', `image ${DIGEST_PREFIX}${sha256} is being imported; delete it once the import has finished`);
    }
    const image = await this.require(ref);
    const digest = image.record.sha256;
    // Checked and marked in one turn of the event loop: use() cannot slip in between.
    if ((this.uses.get(digest) ?? 0) > 0 || this.downloads.has(digest)) {
      throw new RpcError('FAILED_PRECONDITION', `image ${DIGEST_PREFIX}${digest} is in use by a running provisioning or import; retry once it has finished`);
    }
    if (this.deleting.has(digest)) throw new RpcError('FAILED_PRECONDITION', `image ${DIGEST_PREFIX}${digest} is being deleted`);
    this.deleting.add(digest);
    try {
      for (const alias of (await this.aliases()).filter((a) => a.sha256 === digest)) await this.options.repos.imageAliases.delete([this.node, alias.name]);
      const existed = await this.options.repos.images.delete([this.node, digest]);
      await rm(this.pathOf(digest), { force: true });
      if (existed && image.record.quota_gb > 0) await this.options.quotas.release(image.record.owner, 'images_gb', image.record.quota_gb);
      return image;
    } finally {
      this.deleting.delete(digest);
    }
  }

  /** GiB of the images `principal` owns on every node (RecomputeQuota: the quota is per principal, not per node). */
  async usageOwnedBy(principal: string): Promise<{ images_gb: number }> {
    const images = await this.options.repos.images.all();
    return { images_gb: images.filter((i) => i.value.owner === principal).reduce((sum, i) => sum + i.value.quota_gb, 0) };
  }
}
