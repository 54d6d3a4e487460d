// Store errors are typed; src/server/errors.ts maps them to gRPC codes.

export class StoreError extends Error {}

/** The store cannot be reached or did not answer in time. Retry later. */
export class StoreUnavailableError extends StoreError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/** A compare-and-swap lost a race, or a key that must not exist does. */
export class ConflictError extends StoreError {
  constructor(message: string) {
    super(message);
    this.name = 'ConflictError';
  }
}

export class NotFoundError extends StoreError {
  constructor(message: string) {
    super(message);
    this.name = 'NotFoundError';
  }
}

/** The watch asked for history that was compacted away: re-list, then watch from the list's revision. */
export class CompactedError extends StoreError {
  constructor(readonly compactRevision: number) {
    super(`revision compacted (oldest kept: ${compactRevision}); re-list and re-watch`);
    this.name = 'CompactedError';
  }
}
