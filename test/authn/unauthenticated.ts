// Shared by the authenticator suites: the audit reason of an expected UNAUTHENTICATED.
import { expect } from 'vitest';
import { UnauthenticatedError } from '../../src/rpc/errors.js';

export function reasonOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(UnauthenticatedError);
    return (err as UnauthenticatedError).reason;
  }
  throw new Error('expected UNAUTHENTICATED');
}
