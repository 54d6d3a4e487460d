// Trace ids: 128 random bits as 32 hex digits, unique, across pool refills.
import { describe, expect, it } from 'vitest';
import { newTraceId, traceIdFrom } from '../../src/rpc/trace.js';

describe('trace ids', () => {
  it('are 32 lowercase hex digits and do not repeat across several pool refills', () => {
    const ids = Array.from({ length: 2000 }, () => newTraceId());
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('echo a plain client id and replace anything else', () => {
    expect(traceIdFrom('client-trace.id:42')).toBe('client-trace.id:42');
    for (const bad of ['short', 'bad id with spaces', 'x'.repeat(129), 'a\nb'.repeat(5), undefined, 42]) {
      expect(traceIdFrom(bad)).toMatch(/^[0-9a-f]{32}$/);
    }
  });
});
