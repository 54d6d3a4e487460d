// debvisorctl image import|upload|list|get|delete over ImageService: the image library of the node
// the daemon runs on.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Command } from 'commander';
import {
  DeleteImageResponseSchema,
  GetImageResponseSchema,
  ImageService,
  ImportImageResponseSchema,
  ListImagesResponseSchema,
  UploadImageResponseSchema,
  type UploadImageRequestSchema,
} from '../gen/debvisor/v1/image_pb.js';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { ImageSource, type Image } from '../gen/debvisor/v1/image_types_pb.js';
import { bytes, enumName, when, withService } from './command.js';
import { operationRecord, waitAndExit, WAIT_HELP } from './operation.js';
import { printJson, printRecord, printTable } from './output.js';

/** Chunks of an upload: well under the daemon's message size cap (server.max_request_bytes, 1 MiB by default). */
const CHUNK_BYTES = 256 * 1024;
/** An upload's deadline when --timeout is not given: an image of gigabytes takes minutes. */
const UPLOAD_TIMEOUT_MS = 3_600_000;

async function sha256Of(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function imageRecord(image: Image | undefined): Record<string, string> {
  if (!image) throw new Error('the daemon returned no image');
  return {
    sha256: image.sha256,
    aliases: image.aliases.join(', ') || '(none)',
    format: image.format,
    size: bytes(image.sizeBytes),
    'virtual size': bytes(image.virtualSizeBytes),
    source: image.source === ImageSource.URL ? image.sourceUrl : enumName(ImageSource, image.source),
    owner: image.owner,
    node: image.node,
    created: when(image.createTime),
  };
}

export function registerImageCommands(program: Command): void {
  const withImages = withService(program, ImageService);
  const image = program.command('image').description("the node's image library (content-addressed by SHA-256)");

  image
    .command('import')
    .argument('<url>', 'https URL of the image (http only where the daemon allows it)')
    .description('import an image from a URL, checked against its SHA-256 before it is published')
    .requiredOption('--sha256 <hex>', 'the SHA-256 the image must have (64 hex characters)')
    .option('--name <name>', 'a name (alias) for the image')
    .option('--format <format>', 'the format it must have (raw, qcow2); default: whatever it is, within the allow-list')
    .option('--replace', 're-point --name if it names another image')
    .option('--wait', 'wait for the import, with a progress bar on a terminal, and print the operation')
    .addHelpText('after', WAIT_HELP)
    .action(
      withImages(async (call, url: string, opts: { sha256: string; name?: string; format?: string; replace?: boolean; wait?: boolean }) => {
        const response = await call.client.importImage(
          { url, sha256: opts.sha256, name: opts.name ?? '', format: opts.format ?? '', replaceAlias: opts.replace ?? false },
          call.options,
        );
        if (opts.wait) await waitAndExit(call, response.operation, 'import operation', undefined, { progressBar: true });
        if (call.flags.output === 'json') printJson(ImportImageResponseSchema, response);
        else if (response.operation) printRecord(operationRecord(response.operation));
      }),
    );

  image
    .command('upload')
    .argument('<file>', 'the image file (raw or qcow2, within the daemon\'s allowed formats)')
    .description('upload an image file: its SHA-256 is computed here and checked by the daemon before the image is published')
    .option('--name <name>', 'a name (alias) for the image')
    .option('--format <format>', 'the format it must have (raw, qcow2)')
    .option('--replace', 're-point --name if it names another image')
    .addHelpText('after', `\nWithout --timeout the upload may take up to ${UPLOAD_TIMEOUT_MS / 60_000} minutes; progress goes to stderr on a terminal.`)
    .action(
      withImages(async (call, file: string, opts: { name?: string; format?: string; replace?: boolean }) => {
        const size = (await stat(file)).size;
        const sha256 = await sha256Of(file);
        const progress = process.stderr.isTTY && call.flags.output === 'text';
        async function* parts(): AsyncGenerator<MessageInitShape<typeof UploadImageRequestSchema>> {
          yield { part: { case: 'header', value: { sha256, name: opts.name ?? '', format: opts.format ?? '', replaceAlias: opts.replace ?? false, sizeBytes: BigInt(size) } } };
          let sent = 0;
          for await (const chunk of createReadStream(file, { highWaterMark: CHUNK_BYTES })) {
            sent += (chunk as Buffer).length;
            if (progress) process.stderr.write(`\ruploading ${bytes(BigInt(sent))} of ${bytes(BigInt(size))} (${Math.floor((sent / Math.max(1, size)) * 100)}%)\x1b[K`);
            yield { part: { case: 'chunk', value: chunk as Buffer } };
          }
          if (progress) process.stderr.write('\n');
        }
        const response = await call.client.uploadImage(parts(), { ...call.options, timeoutMs: call.timeoutGiven ? call.options.timeoutMs : UPLOAD_TIMEOUT_MS });
        if (call.flags.output === 'json') printJson(UploadImageResponseSchema, response);
        else printRecord(imageRecord(response.image));
      }),
    );

  image
    .command('list')
    .description('list the images of the library, by digest')
    .option('--name <glob>', 'only images with a name matching this glob')
    .action(
      withImages(async ({ client, options, flags }, opts: { name?: string }) => {
        const response = await client.listImages({ nameGlob: opts.name ?? '' }, options);
        if (flags.output === 'json') printJson(ListImagesResponseSchema, response);
        else
          printTable(
            ['sha256', 'aliases', 'format', 'size', 'virtual size', 'created'],
            response.images.map((each) => [each.sha256.slice(0, 16), each.aliases.join(',') || '-', each.format, bytes(each.sizeBytes), bytes(each.virtualSizeBytes), when(each.createTime)]),
          );
      }),
    );

  image
    .command('get')
    .argument('<image>', 'image name, or sha256:<hex digest>')
    .description('show one image')
    .action(
      withImages(async ({ client, options, flags }, ref: string) => {
        const response = await client.getImage({ image: ref }, options);
        if (flags.output === 'json') printJson(GetImageResponseSchema, response);
        else printRecord(imageRecord(response.image));
      }),
    );

  image
    .command('delete')
    .argument('<image>', 'image name, or sha256:<hex digest>')
    .description('delete an image and all its names (refused while an import or a provisioning uses it)')
    .option('--alias-only', 'remove only this name; the image stays')
    .action(
      withImages(async ({ client, options, flags }, ref: string, opts: { aliasOnly?: boolean }) => {
        const response = await client.deleteImage({ image: ref, aliasOnly: opts.aliasOnly ?? false }, options);
        if (flags.output === 'json') printJson(DeleteImageResponseSchema, response);
        else printRecord({ ...imageRecord(response.image), deleted: response.deleted ? 'image and file' : `name ${ref}` });
      }),
    );
}
