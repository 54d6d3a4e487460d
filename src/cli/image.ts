// debvisorctl image import|list|get|delete over ImageService: the image library of the node
// the daemon runs on.
import type { Command } from 'commander';
import {
  DeleteImageResponseSchema,
  GetImageResponseSchema,
  ImageService,
  ImportImageResponseSchema,
  ListImagesResponseSchema,
} from '../gen/debvisor/v1/image_pb.js';
import { ImageSource, type Image } from '../gen/debvisor/v1/image_types_pb.js';
import { bytes, enumName, when, withService } from './command.js';
import { operationRecord, waitAndExit, WAIT_HELP } from './operation.js';
import { printJson, printRecord, printTable } from './output.js';

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
