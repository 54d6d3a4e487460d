// ImageService: the protobuf mapping over this node's image library (src/images/library.ts).
// Imports are resumable operations: a daemon restarted mid-download continues it (with a Range
// request, src/images/fetch.ts) from the partial file it kept.
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromDate } from '@bufbuild/protobuf/wkt';
import { z } from 'zod';
import { globMatches, isValidResourceGlob, keyScopeShows } from '../authz/decide.js';
import type { ImageService } from '../gen/debvisor/v1/image_pb.js';
import { ImageSource, type ImageSchema } from '../gen/debvisor/v1/image_types_pb.js';
import { OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import { DIGEST_PREFIX, parseImageRef, validateAlias, validateSha256 } from '../images/names.js';
import type { ImageLibrary, LibraryImage } from '../images/library.js';
import { defineOperationKind } from '../operations/kinds.js';
import type { OperationManager } from '../operations/manager.js';
import type { HandlersOf } from '../rpc/adapter.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, UnauthenticatedError } from '../rpc/errors.js';
import { pageByKey } from '../rpc/paging.js';
import { operationMessage } from './operations.js';

/** ImportImage: the image in the library. Resumable: the partial download survives a restart. */
export const IMPORT_IMAGE = defineOperationKind(
  OperationKind.IMPORT_IMAGE,
  z.object({
    url: z.string(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/),
    name: z.string(),
    format: z.string(),
    replaceAlias: z.boolean(),
    owner: z.string(),
  }),
  'importedImage',
);

const FORMAT = /^[a-z0-9]{1,16}$/;

export function imageMessage(image: LibraryImage): MessageInitShape<typeof ImageSchema> {
  const r = image.record;
  return {
    sha256: r.sha256,
    aliases: image.aliases,
    sizeBytes: BigInt(r.size_bytes),
    format: r.format,
    virtualSizeBytes: BigInt(r.virtual_size_bytes),
    source: r.source === 'url' ? ImageSource.URL : ImageSource.UPLOAD,
    sourceUrl: r.source_url,
    owner: r.owner,
    createTime: timestampFromDate(new Date(r.created_at)),
    node: r.node,
  };
}

/** Registers the runner of ImportImage. */
export function registerImageOperationKinds(operations: OperationManager, library: ImageLibrary): void {
  operations.register(IMPORT_IMAGE, {
    resumable: true,
    run: async (op) => {
      const { record } = await library.import(op.params, { signal: op.signal, onProgress: (percent, stage, bytes) => op.progress(percent, stage, bytes) });
      return { case: 'importedImage', value: imageMessage(await library.require({ kind: 'digest', sha256: record.sha256 })) };
    },
  });
}

export interface ImageHandlerDeps {
  readonly library: ImageLibrary;
  readonly operations: OperationManager;
  /** Checks an image URL (scheme, host, no credentials) before anything is fetched; throws InvalidArgumentError naming `field`. */
  readonly validateUrl: (url: string, field: string) => void;
  /** The formats this node accepts (images.allowed_formats). */
  readonly allowedFormats: () => readonly string[];
}

function principalOf(ctx: CallContext) {
  if (!ctx.principal) throw new UnauthenticatedError('no principal on call');
  return ctx.principal;
}

export function imageHandlers({ library, operations, validateUrl, allowedFormats }: ImageHandlerDeps): HandlersOf<typeof ImageService> {
  /** Whether a scoped key's image globs let it see an image (by one of its names or its digest). */
  const visibleTo = (ctx: CallContext) => {
    const scope = principalOf(ctx).apiKey?.resourceGlobs;
    return (image: LibraryImage) => keyScopeShows(scope, 'image', ...image.aliases, DIGEST_PREFIX + image.record.sha256);
  };

  return {
    importImage: async (request, ctx) => {
      const owner = principalOf(ctx).id;
      const sha256 = validateSha256(request.sha256, 'sha256');
      if (request.url === '') throw new InvalidArgumentError('url', 'required: the https URL of the image');
      validateUrl(request.url, 'url');
      const name = request.name === '' ? '' : validateAlias(request.name, 'name');
      if (request.format !== '' && !FORMAT.test(request.format)) throw new InvalidArgumentError('format', 'a qemu-img format name such as raw or qcow2');
      if (request.format !== '' && !allowedFormats().includes(request.format)) {
        throw new InvalidArgumentError('format', `not accepted on this node (allowed: ${allowedFormats().join(', ')})`);
      }
      if (request.replaceAlias && name === '') throw new InvalidArgumentError('replace_alias', 'needs a name to re-point');
      // A name held by another digest is answered now, not as a failed operation.
      if (name) await library.checkAlias(name, sha256, request.replaceAlias, 'name');
      await library.checkRoom(owner, sha256);
      const record = await operations.launch(ctx, IMPORT_IMAGE, {
        target: name || `${DIGEST_PREFIX}${sha256}`,
        params: { url: request.url, sha256, name, format: request.format, replaceAlias: request.replaceAlias, owner },
        resumable: true,
        ...(request.requestId ? { requestId: request.requestId } : {}),
      });
      return { operation: operationMessage(record) };
    },

    uploadImage: async (requests, ctx) => {
      const owner = principalOf(ctx).id;
      const iterator = requests[Symbol.asyncIterator]();
      const first = await iterator.next();
      const header = first.done === true || first.value.part.case !== 'header' ? undefined : first.value.part.value;
      if (!header) throw new InvalidArgumentError('header', 'required: the first message is the header (sha256, name, format)');
      const sha256 = validateSha256(header.sha256, 'header.sha256');
      const name = header.name === '' ? '' : validateAlias(header.name, 'header.name');
      if (header.format !== '' && (!FORMAT.test(header.format) || !allowedFormats().includes(header.format))) {
        throw new InvalidArgumentError('header.format', `not accepted on this node (allowed: ${allowedFormats().join(', ')})`);
      }
      if (header.replaceAlias && name === '') throw new InvalidArgumentError('header.replace_alias', 'needs a name to re-point');
      if (header.sizeBytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new InvalidArgumentError('header.size_bytes', 'too large');
      if (name) await library.checkAlias(name, sha256, header.replaceAlias, 'header.name');
      /** The chunks after the header; a second header is refused. */
      async function* chunks(): AsyncGenerator<Uint8Array> {
        for (let next = await iterator.next(); next.done !== true; next = await iterator.next()) {
          if (next.value.part.case !== 'chunk') throw new InvalidArgumentError('chunk', 'every message after the header is a chunk');
          yield next.value.part.value;
        }
      }
      const { record } = await library.upload(
        { sha256, name, format: header.format, replaceAlias: header.replaceAlias, owner, sizeBytes: Number(header.sizeBytes) },
        chunks(),
        ctx.signal,
      );
      return { image: imageMessage(await library.require({ kind: 'digest', sha256: record.sha256 })) };
    },

    listImages: async (request, ctx) => {
      if (request.nameGlob && !isValidResourceGlob(request.nameGlob)) {
        throw new InvalidArgumentError('name_glob', 'may contain only name characters plus * and ?, at most 256');
      }
      const visible = visibleTo(ctx);
      const matching = (await library.list()).filter(
        (image) => visible(image) && (!request.nameGlob || image.aliases.some((alias) => globMatches(request.nameGlob, alias))),
      );
      const page = pageByKey(matching, (image) => image.record.sha256, request);
      return { images: page.items.map(imageMessage), nextPageToken: page.nextPageToken };
    },

    getImage: async (request) => {
      return { image: imageMessage(await library.require(parseImageRef(request.image, 'image'))) };
    },

    deleteImage: async (request) => {
      const ref = parseImageRef(request.image, 'image');
      if (request.aliasOnly) {
        if (ref.kind !== 'alias') throw new InvalidArgumentError('alias_only', 'needs an image name, not a digest');
        return { image: imageMessage(await library.deleteAlias(ref.name)), deleted: false };
      }
      return { image: imageMessage(await library.delete(ref)), deleted: true };
    },
  };
}
