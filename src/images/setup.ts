// Builds this node's image library from the config: the downloader with its SSRF policy
// (src/images/fetch.ts), qemu-img inspection from the storage side, and the images_gb usage
// source RecomputeQuota recounts from.
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import type { Config } from '../config/schema.js';
import type { QuotaManager } from '../quota/manager.js';
import type { Repositories } from '../store/repositories.js';
import { downloadImage, fetchPolicyOf, partialMetaPath } from './fetch.js';
import { ImageLibrary, type ImageInspector } from './library.js';

export interface ImageLibraryDeps {
  readonly config: Config;
  readonly settings: () => Config;
  readonly repos: Repositories;
  readonly quotas: QuotaManager;
  readonly inspector: ImageInspector;
  readonly registry: Registry;
  readonly log: Logger;
}

export function createImageLibrary(deps: ImageLibraryDeps): ImageLibrary {
  const library = new ImageLibrary({
    repos: deps.repos,
    node: deps.config.node.name,
    imagesDir: () => deps.settings().images_dir,
    inspector: deps.inspector,
    quotas: deps.quotas,
    download: (request) => downloadImage(request),
    partialCompanions: (partial) => [partialMetaPath(partial)],
    downloadSettings: () => {
      const images = deps.settings().images;
      return { maxBytes: images.max_bytes, policy: fetchPolicyOf(images) };
    },
    registry: deps.registry,
    log: deps.log.child({ component: 'images' }),
  });
  deps.quotas.registerUsageSource(['images_gb'], (principal) => library.usageOwnedBy(principal));
  return library;
}
