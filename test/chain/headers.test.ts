// The identity step reads headers through Metadata's public methods (src/chain/headers.ts),
// and what a client sends in credential or internal headers must be gone before any handler
// sees the call.
import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { firstHeader, headerNames } from '../../src/chain/headers.js';
import { identity, type IdentityDeps } from '../../src/chain/identity.js';
import type { StepCall } from '../../src/chain/step.js';
import type { CallState } from '../../src/rpc/context.js';
import { UnauthenticatedError } from '../../src/rpc/errors.js';

function sent(headers: Record<string, string>): Metadata {
  const metadata = new Metadata();
  for (const [name, value] of Object.entries(headers)) metadata.add(name, value);
  return metadata;
}

describe('header reading', () => {
  it('reads the first value of a header, or nothing for one not sent, case-insensitively', () => {
    const metadata = sent({ authorization: 'Bearer dvk_x', 'x-request-id': 'abc' });
    metadata.add('x-request-id', 'second');
    expect(firstHeader(metadata, 'authorization')).toBe('Bearer dvk_x');
    expect(firstHeader(metadata, 'Authorization')).toBe('Bearer dvk_x');
    expect(firstHeader(metadata, 'x-request-id')).toBe('abc');
    expect(firstHeader(metadata, 'x-api-key')).toBeUndefined();
  });

  it('names every header sent, lower case', () => {
    const metadata = sent({ 'X-Api-Key': 'k', 'x-debvisor-roles': 'admin', 'user-agent': 'u' });
    expect(headerNames(metadata).sort()).toEqual(['user-agent', 'x-api-key', 'x-debvisor-roles']);
  });
});

describe('identity step', () => {
  const deps = {
    guard: { addressBlockedFor: () => 0, keyBlockedFor: () => 0, anyKeyBlocked: false, recordFailure: () => [] },
    metrics: { authAttempts: { cell: () => ({ inc: () => undefined }), inc: () => undefined } },
    audit: { write: () => undefined },
    apiKeys: {
      authenticate: (token: string) => {
        throw new UnauthenticatedError(`malformed API key (${token.length} characters)`);
      },
    },
  } as unknown as IdentityDeps;
  const step = identity(deps);

  it('strips credential and internal headers before refusing or passing the call on', () => {
    const metadata = sent({
      authorization: 'Bearer not-a-key',
      'x-api-key': 'not-a-key',
      'x-debvisor-principal': 'spiffe://debvisor/admin/admin',
      'x-debvisor-roles': 'admin',
      'x-request-id': 'kept',
      'user-agent': 'kept',
    });
    const state = { traceId: 't', startedAt: 0, path: '/p', peer: '127.0.0.1:1' } as CallState;
    const call = { path: '/p', metadata, connection: { peer: '127.0.0.1:1', ip: '127.0.0.1', certificate: undefined, session: undefined } } as unknown as StepCall;
    expect(() => step.onRequest?.(state, call)).toThrow(UnauthenticatedError);
    expect(Object.keys(metadata.getMap()).sort()).toEqual(['user-agent', 'x-request-id']);
  });
});
