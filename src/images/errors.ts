// Why an image download failed, as a domain error (src/rpc/errors.ts maps its meaning to a code).
// Refusals by policy, a body too large and a wrong digest are FAILED_PRECONDITION (meaning
// `unsupported`): retrying the same request will not help, the caller must change the URL, the
// digest or the node's config. PERMISSION_DENIED is kept for the caller's own rights (RBAC), so a
// refused address never reads as "you may not". Network trouble and 5xx are UNAVAILABLE.
import { DomainError, type DomainErrorKind } from '../errors/domain.js';

export type ImageFetchFailure =
  /** The URL's scheme is not allowed (http without images.allow_http, or anything but http/https). */
  | 'scheme_refused'
  /** The host resolves to (or is) an address the SSRF guard refuses. */
  | 'address_refused'
  | 'too_many_redirects'
  /** A redirect without a usable Location. */
  | 'bad_redirect'
  /** Content-Length, Content-Range or the streamed body is over the size cap. */
  | 'too_large'
  | 'digest_mismatch'
  /** The server answered 4xx (but 408/429), or a reply we cannot use (a wrong Content-Range). */
  | 'http_status'
  /** 5xx, 408, 429. */
  | 'http_unavailable'
  /** The server's certificate did not verify against the image trust. */
  | 'tls'
  /** Connection refused/reset, DNS failure, idle timeout: retry later. */
  | 'network'
  /** The partial file's file system is full. */
  | 'no_space'
  | 'cancelled';

const MEANING: Record<ImageFetchFailure, DomainErrorKind> = {
  scheme_refused: 'unsupported',
  address_refused: 'unsupported',
  too_many_redirects: 'unsupported',
  bad_redirect: 'unsupported',
  too_large: 'unsupported',
  digest_mismatch: 'unsupported',
  http_status: 'unsupported',
  http_unavailable: 'unavailable',
  tls: 'unsupported',
  network: 'unavailable',
  no_space: 'no_space',
  cancelled: 'cancelled',
};

export class ImageFetchError extends DomainError {
  readonly meaning: DomainErrorKind;

  /**
   * `safeMessage` is shown to the caller: it never names a resolved address (that would make the
   * daemon an oracle of internal DNS). `detail` goes to the log only.
   */
  constructor(
    readonly failure: ImageFetchFailure,
    readonly safeMessage: string,
    detail?: string,
    options?: { cause?: unknown },
  ) {
    super(detail ?? safeMessage, options);
    this.name = 'ImageFetchError';
    this.meaning = MEANING[failure];
  }

  /** Worth retrying the same request (with Range) after a pause. */
  get transient(): boolean {
    return this.meaning === 'unavailable';
  }
}
