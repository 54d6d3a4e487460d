// A library image named as a volume's source (ProvisionVolume's `image`, CreateVm's
// `disks[i].image.image`): resolved for the caller, who must be able to address it.
import { globMatches } from '../authz/decide.js';
import { RpcError } from '../rpc/errors.js';
import type { Principal } from '../rpc/principal.js';
import type { ImageLibrary } from './library.js';
import { parseImageRef } from './names.js';

/** Where a volume's data comes from: the image's file under the images directory, and its digest (the volume's lineage). */
export interface LibraryImageSource {
  readonly imagePath: string;
  readonly imageSha256: string;
}

/**
 * The library image `value` ("sha256:<hex>" or a name), validated (INVALID_ARGUMENT naming
 * `field`). RBAC scoped the call by pool; a key that also carries image globs must cover the image.
 */
export async function libraryImageSource(images: ImageLibrary | undefined, value: string, principal: Principal, field: string): Promise<LibraryImageSource> {
  const ref = parseImageRef(value, field);
  const imageGlobs = (principal.apiKey?.resourceGlobs ?? []).filter((g) => g.kind === 'image');
  if (imageGlobs.length > 0 && !imageGlobs.some((g) => globMatches(g.glob, value))) {
    throw new RpcError('PERMISSION_DENIED', `permission denied: this API key is not scoped to image "${value}"`);
  }
  if (!images) throw new RpcError('FAILED_PRECONDITION', 'this node has no image library');
  const image = await images.require(ref);
  images.countCacheHit();
  return { imagePath: images.relativePathOf(image.record.sha256), imageSha256: image.record.sha256 };
}
