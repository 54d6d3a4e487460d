// Errors as they arise in a domain (the store, a host command), classified by what they mean
// to a caller and knowing nothing of gRPC. src/rpc/errors.ts maps each kind to a gRPC code in
// one table at the edge. This module imports nothing, so every layer may use it.

export type DomainErrorKind =
  | 'not_found'
  | 'already_exists'
  /** A compare-and-swap lost a race: retry. */
  | 'conflict'
  /** The object is in use: retry later. */
  | 'busy'
  /** A listing or cursor is no longer valid: start again. */
  | 'expired'
  | 'no_space'
  | 'unsupported'
  | 'unavailable'
  | 'timeout'
  | 'cancelled'
  /** Anything else: the caller sees a generic message. */
  | 'failed';

/** What a caller is told of a failure whose details are internal (stderr, store keys). */
export const GENERIC_INTERNAL_MESSAGE = 'internal error';

export abstract class DomainError extends Error {
  /** What the failure means to a caller. */
  abstract readonly meaning: DomainErrorKind;
  /** A message safe to show the caller: never internals such as stderr or store keys. */
  abstract readonly safeMessage: string;
}
