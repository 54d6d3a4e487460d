// Store errors are typed domain errors; src/rpc/errors.ts maps their meaning to gRPC codes.
import { DomainError, GENERIC_INTERNAL_MESSAGE, type DomainErrorKind } from '../errors/domain.js';

/** A store failure with no more specific meaning: the caller sees a generic internal error. */
export class StoreError extends DomainError {
  readonly meaning: DomainErrorKind = 'failed';
  readonly safeMessage: string = GENERIC_INTERNAL_MESSAGE;
}

/** The store cannot be reached or did not answer in time. Retry later. */
export class StoreUnavailableError extends StoreError {
  override readonly meaning: DomainErrorKind = 'unavailable';
  override readonly safeMessage = 'the state store is unavailable; retry later';

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/** A compare-and-swap lost a race, or a key that must not exist does. */
export class ConflictError extends StoreError {
  override readonly meaning: DomainErrorKind = 'conflict';
  override readonly safeMessage = 'concurrent modification; retry';

  constructor(message: string) {
    super(message);
    this.name = 'ConflictError';
  }
}

export class NotFoundError extends StoreError {
  override readonly meaning: DomainErrorKind = 'not_found';
  override readonly safeMessage: string;

  constructor(message: string) {
    super(message);
    this.name = 'NotFoundError';
    this.safeMessage = message;
  }
}

/** The watch asked for history that was compacted away: re-list, then watch from the list's revision. */
export class CompactedError extends StoreError {
  override readonly meaning: DomainErrorKind = 'expired';
  override readonly safeMessage = 'the listing expired; start again';

  constructor(readonly compactRevision: number) {
    super(`revision compacted (oldest kept: ${compactRevision}); re-list and re-watch`);
    this.name = 'CompactedError';
  }
}
