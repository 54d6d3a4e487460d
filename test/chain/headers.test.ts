// The identity step reads headers from grpc-js's own per-call map (src/chain/headers.ts)
// instead of copying them: that map must be the live one, and what a client sends in
// credential or internal headers must be gone before any handler sees the call.
import { Metadata } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { firstHeader, headerMap } from '../../src/chain/headers.js';
import { identity, type IdentityDeps } from '../../src/chain/identity.js';
import type { StepCall } from '../../src/chain/step.js';
import type { CallState } from '../../src/rpc/context.js';
import { UnauthenticatedError } from '../../src/rpc/errors.js';

function sent(headers: Record<string, string>): Metadata {
  const metadata = new Metadata();
  for (const [name, value] of Object.entries(headers)) metadata.add(name, value);
  return metadata;
}

describe('headerMap', () => {
  it("is grpc-js's own map of the call, not a copy (a grpc-js upgrade that changes this fails here)", () => {
    const metadata = sent({ authorization: 'Bearer dvk_x', 'x-request-id': 'abc' });
    const headers = headerMap(metadata);
    expect(firstHeader(headers, 'authorization')).toBe('Bearer dvk_x');
    expect(firstHeader(headers, 'x-api-key')).toBeUndefined();
    metadata.remove('authorization');
    expect(headers.has('authorization')).toBe(false);
    metadata.set('x-api-key', 'k');
    expect(firstHeader(headers, 'x-api-key')).toBe('k');
  });

  it('falls back to a copy when the metadata has no map of its own', () => {
    const metadata = sent({ 'x-api-key': 'k', te: 'trailers' });
    const foreign = { getMap: () => metadata.getMap() } as unknown as Metadata;
    expect([...headerMap(foreign)]).toEqual([
      ['x-api-key', ['k']],
      ['te', ['trailers']],
    ]);
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
