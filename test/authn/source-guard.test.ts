// SourceGuard's counting, with a clock the test moves: windows, limits, the key id blocked
// before the address, unblock, and the metrics.
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { SourceGuard } from '../../src/authn/source-guard.js';

const KEY = '0123456789abcdef';

function guard(overrides: Partial<ConstructorParameters<typeof SourceGuard>[0]> = {}) {
  const clock = { now: 1_000_000 };
  const registry = new Registry();
  const g = new SourceGuard({ maxFailures: 5, maxKeyFailures: 3, windowMs: 60_000, blockMs: 300_000, now: () => clock.now, registry, ...overrides });
  return { g, clock, registry };
}

describe('SourceGuard', () => {
  it('blocks an address on the sixth failure within the window, for blockMs', () => {
    const { g, clock } = guard();
    for (let i = 0; i < 5; i++) expect(g.recordFailure('10.0.0.1')).toEqual([]);
    expect(g.addressBlockedFor('10.0.0.1')).toBe(0);
    expect(g.recordFailure('10.0.0.1').map((b) => [b.kind, b.subject])).toEqual([['address', '10.0.0.1']]);
    // The IPv4-mapped form is the same source.
    expect(g.addressBlockedFor('::ffff:10.0.0.1')).toBe(300_000);
    clock.now += 300_000;
    expect(g.addressBlockedFor('10.0.0.1')).toBe(0);
    expect(g.list()).toEqual([]);
  });

  it('forgets failures older than the window', () => {
    const { g, clock } = guard();
    for (let i = 0; i < 5; i++) g.recordFailure('10.0.0.2');
    clock.now += 60_000;
    expect(g.recordFailure('10.0.0.2')).toEqual([]);
  });

  it('blocks a key id with wrong secrets before its address, and keeps the key limit below the address limit', () => {
    const { g } = guard();
    for (let i = 0; i < 3; i++) expect(g.recordFailure('10.0.0.3', KEY)).toEqual([]);
    expect(g.recordFailure('10.0.0.3', KEY).map((b) => b.kind)).toEqual(['key']);
    expect(g.keyBlockedFor(KEY)).toBeGreaterThan(0);
    expect(g.addressBlockedFor('10.0.0.3')).toBe(0);

    const clamped = guard({ maxFailures: 2, maxKeyFailures: 10 }).g;
    expect(clamped.recordFailure('10.0.0.4', KEY)).toEqual([]);
    expect(clamped.recordFailure('10.0.0.4', KEY).map((b) => b.kind)).toEqual(['key']);
    expect(clamped.recordFailure('10.0.0.4', KEY).map((b) => b.kind)).toEqual(['address']);
  });

  it('unblock lifts a block and forgets its failures; list and metrics follow', async () => {
    const { g, registry } = guard();
    for (let i = 0; i < 6; i++) g.recordFailure('10.0.0.5', KEY);
    expect(g.list().map((b) => [b.kind, b.subject, b.failures])).toEqual([
      ['address', '10.0.0.5', 6],
      ['key', KEY, 4],
    ]);
    const text = await registry.metrics();
    expect(text).toContain('auth_blocks_active{kind="address"} 1');
    expect(text).toContain('auth_blocks_total{kind="key"} 1');
    expect(g.unblock('::ffff:10.0.0.5').map((b) => b.subject)).toEqual(['10.0.0.5']);
    expect(g.unblock('10.0.0.5')).toEqual([]);
    expect(g.unblock(KEY).map((b) => b.kind)).toEqual(['key']);
    expect(g.anyKeyBlocked).toBe(false);
    expect(await registry.metrics()).toContain('auth_blocks_active{kind="address"} 0');
    // Counting starts afresh.
    for (let i = 0; i < 5; i++) expect(g.recordFailure('10.0.0.5')).toEqual([]);
  });
});
