// GCRA limiter with an injected clock: accuracy under overload, exact retry-after,
// bounded memory, fairness between keys, and the per-call cost of take().
import { describe, expect, it } from 'vitest';
import { RateLimiter } from '../../src/ratelimit/limiter.js';
import { seededRandom as rng } from '../support/random.js';

class Clock {
  t = 1_000_000;
  readonly now = () => this.t;
  advance(ms: number): void {
    this.t += ms;
  }
}

const MINUTE = 60_000;

/** take() as an outcome to compare: the cost-1 calls left after a successful take, or the wait. */
function outcome(limiter: RateLimiter, key: string, rate: number, cost?: number) {
  const waitMs = limiter.take(key, rate, cost);
  return waitMs === 0 ? { allowed: true, remaining: limiter.remaining(key, rate) } : { allowed: false, retryAfterMs: waitMs };
}

/** Offers `factor`× the limit (in cells) for `minutes`, spaced by `gap()`, and returns accepted cells per minute. */
function acceptedPerMinute(rate: number, cost: number, factor: number, minutes: number, gap: (mean: number) => number): number {
  const clock = new Clock();
  const limiter = new RateLimiter({ now: clock.now });
  const mean = (cost * MINUTE) / (rate * factor);
  const end = clock.t + minutes * MINUTE;
  let cells = 0;
  while (clock.t < end) {
    if (limiter.take('k', rate, cost) === 0) cells += cost;
    clock.advance(gap(mean));
  }
  return cells / minutes;
}

describe('RateLimiter accuracy', () => {
  const cases = [100, 500, 1000].flatMap((rate) => [1, 2, 5].map((cost) => [rate, cost] as const));

  it.each(cases)('steady 2× load over 3 minutes: %i/min, cost %i → accepted rate within ±5 percent of the limit', (rate, cost) => {
    const accepted = acceptedPerMinute(rate, cost, 2, 3, (mean) => mean);
    const error = (accepted - rate) / rate;
    console.log(`rate ${rate}/min cost ${cost}: steady 2x → ${accepted.toFixed(1)}/min (${(error * 100).toFixed(2)}%)`);
    expect(Math.abs(error)).toBeLessThanOrEqual(0.05);
  });

  it.each(cases)('Poisson 2× load over 3 minutes: %i/min, cost %i → accepted rate within ±5 percent of the limit', (rate, cost) => {
    const random = rng(rate * 31 + cost);
    const accepted = acceptedPerMinute(rate, cost, 2, 3, (mean) => -mean * Math.log(1 - random()));
    const error = (accepted - rate) / rate;
    console.log(`rate ${rate}/min cost ${cost}: Poisson 2x → ${accepted.toFixed(1)}/min (${(error * 100).toFixed(2)}%)`);
    expect(Math.abs(error)).toBeLessThanOrEqual(0.05);
  });

  it('never exceeds limit + burst over any run, even at 10× load', () => {
    for (const rate of [7, 60, 100, 1000, 6000]) {
      const limiter = new RateLimiter({ now: new Clock().now });
      const accepted = acceptedPerMinute(rate, 1, 10, 3, (mean) => mean);
      expect(accepted * 3, `rate ${rate}`).toBeLessThanOrEqual(3 * rate + limiter.burstFor(rate) + 1);
      expect(accepted * 3, `rate ${rate}`).toBeGreaterThanOrEqual(3 * rate - 1);
    }
  });

  it('under the limit, everything is accepted', () => {
    expect(acceptedPerMinute(100, 1, 0.9, 3, (mean) => mean)).toBeCloseTo(90, 0);
    expect(acceptedPerMinute(1000, 5, 0.99, 3, (mean) => mean)).toBeGreaterThan(985);
  });
});

describe('RateLimiter semantics', () => {
  it('a fresh key has a burst of 10% of the per-minute limit, then is paced', () => {
    const clock = new Clock();
    const limiter = new RateLimiter({ now: clock.now });
    expect(limiter.burstFor(100)).toBe(10);
    expect(limiter.burstFor(1000)).toBe(100);
    expect(limiter.burstFor(5)).toBe(1);
    expect(new RateLimiter({ burstFraction: 0.05 }).burstFor(100)).toBe(5);
    const results = Array.from({ length: 10 }, () => outcome(limiter, 'a', 100));
    expect(results).toEqual([9, 8, 7, 6, 5, 4, 3, 2, 1, 0].map((r) => ({ allowed: true, remaining: r })));
    expect(outcome(limiter, 'a', 100)).toEqual({ allowed: false, retryAfterMs: 600 });
    clock.advance(599);
    expect(outcome(limiter, 'a', 100).allowed).toBe(false);
    clock.advance(1);
    expect(outcome(limiter, 'a', 100)).toEqual({ allowed: true, remaining: 0 });
    clock.advance(6000); // idle for a burst's worth: full again
    expect(outcome(limiter, 'a', 100)).toEqual({ allowed: true, remaining: 9 });
  });

  it('cost > 1 consumes cost cells; an expensive call needs a full bucket plus its own cells', () => {
    const clock = new Clock();
    const limiter = new RateLimiter({ now: clock.now }); // 100/min: T = 600 ms, burst 10
    expect(outcome(limiter, 'a', 100, 2)).toEqual({ allowed: true, remaining: 8 });
    expect(outcome(limiter, 'a', 100, 5)).toEqual({ allowed: true, remaining: 3 });
    expect(outcome(limiter, 'a', 100, 5)).toEqual({ allowed: true, remaining: 0 }); // borrows 2 cells (τ = 14 cells)
    expect(outcome(limiter, 'a', 100, 1)).toEqual({ allowed: false, retryAfterMs: 3 * 600 });
    expect(outcome(limiter, 'a', 100, 5)).toEqual({ allowed: false, retryAfterMs: 3 * 600 });
    clock.advance(1800);
    expect(outcome(limiter, 'a', 100, 1)).toEqual({ allowed: true, remaining: 0 });
    // 5/min (burst 1 cell = 12 s): a cost-5 call is allowed from a full bucket, then the key owes 4 cells
    expect(outcome(limiter, 'b', 5, 5)).toEqual({ allowed: true, remaining: 0 });
    expect(outcome(limiter, 'b', 5, 1)).toEqual({ allowed: false, retryAfterMs: 60_000 });
    expect(outcome(limiter, 'b', 5, 5)).toEqual({ allowed: false, retryAfterMs: 60_000 });
    clock.advance(60_000);
    expect(outcome(limiter, 'b', 5, 5).allowed).toBe(true);
    expect(outcome(limiter, 'c', 100, 0)).toEqual({ allowed: true, remaining: 9 }); // 0 means 1
  });

  it('retryAfterMs is exact: denied 1 ms before, allowed at it (random rates, costs and gaps)', () => {
    const random = rng(7);
    for (const rate of [1, 7, 100, 333, 700, 1000, 3000, 6000]) {
      const clock = new Clock();
      const limiter = new RateLimiter({ now: clock.now });
      let denials = 0;
      for (let i = 0; i < 2000; i++) {
        const cost = 1 + Math.floor(random() * 4);
        const r = limiter.take('k', rate, cost);
        if (r > 0) {
          denials++;
          expect(r).toBeGreaterThanOrEqual(1);
          expect(Number.isInteger(r)).toBe(true);
          clock.advance(r - 1);
          expect(outcome(limiter, 'k', rate, cost).allowed, `rate ${rate} cost ${cost} retry ${r}: early`).toBe(false);
          clock.advance(1);
          expect(outcome(limiter, 'k', rate, cost).allowed, `rate ${rate} cost ${cost} retry ${r}: on time`).toBe(true);
        }
        clock.advance(Math.floor(random() * ((60_000 / rate) * 1.5)));
      }
      expect(denials, `rate ${rate}`).toBeGreaterThan(50);
    }
  });

  it('rejects nonsense limits and treats Infinity as unlimited', () => {
    const limiter = new RateLimiter({ now: () => 0 });
    expect(() => limiter.take('k', 0)).toThrow(RangeError);
    expect(() => limiter.take('k', -1)).toThrow(RangeError);
    expect(() => limiter.take('k', Number.NaN)).toThrow(RangeError);
    expect(() => limiter.take('k', 10, Number.NaN)).toThrow(RangeError);
    expect(outcome(limiter, 'k', Infinity).allowed).toBe(true);
    expect(limiter.size()).toBe(0);
    expect(() => new RateLimiter({ maxKeys: 0 })).toThrow(RangeError);
  });
});

describe('RateLimiter fairness', () => {
  it('a heavy key does not starve a light one, and each gets its own limit', () => {
    const clock = new Clock();
    const limiter = new RateLimiter({ now: clock.now });
    const rate = 120; // T = 500 ms
    let heavy = 0;
    let light = 0;
    let lightOffered = 0;
    for (let ms = 0; ms < 3 * MINUTE; ms += 50) {
      if (limiter.take('heavy', rate) === 0) heavy++; // 10× the limit
      if (ms % 1000 === 0) {
        lightOffered++; // half the limit
        if (limiter.take('light', rate) === 0) light++;
      }
      clock.advance(50);
    }
    expect(light).toBe(lightOffered);
    expect(Math.abs(heavy / 3 - rate) / rate).toBeLessThanOrEqual(0.05);
  });

  it('different keys are independent; different limits per key apply', () => {
    const clock = new Clock();
    const limiter = new RateLimiter({ now: clock.now });
    for (let i = 0; i < 100; i++) expect(outcome(limiter, 'admin', 1000).allowed).toBe(true);
    expect(outcome(limiter, 'admin', 1000).allowed).toBe(false);
    for (let i = 0; i < 10; i++) expect(outcome(limiter, 'viewer', 100).allowed).toBe(true);
    expect(outcome(limiter, 'viewer', 100).allowed).toBe(false);
  });
});

describe('RateLimiter memory', () => {
  it('1M one-shot keys with a frozen clock: size never exceeds maxKeys', () => {
    const limiter = new RateLimiter({ now: () => 0, maxKeys: 10_000 });
    let max = 0;
    for (let i = 0; i < 1_000_000; i++) {
      limiter.take(`k${i}`, 100);
      if ((i & 1023) === 0) max = Math.max(max, limiter.size());
    }
    max = Math.max(max, limiter.size());
    console.log(`frozen clock, 1M keys: max size ${max}`);
    expect(max).toBeLessThanOrEqual(10_000);
  });

  it('1M one-shot keys over time: idle keys are swept, size tracks the live set', () => {
    const clock = new Clock();
    const limiter = new RateLimiter({ now: clock.now }); // default maxKeys 100 000
    let max = 0;
    for (let i = 0; i < 1_000_000; i++) {
      limiter.take(`k${i}`, 100); // T = 600 ms: each key stays live 600 ms
      clock.advance(0.1); // 10 000 keys/s → ~6 000 live keys at any time
      if ((i & 1023) === 0) max = Math.max(max, limiter.size());
    }
    console.log(`advancing clock, 1M keys: max size ${max} (live set ~6000)`);
    // The sweep visits 2 entries per take round-robin, so an idle key lingers at most
    // one pass (size/2 takes): size ≤ ~2× the live set.
    expect(max).toBeLessThanOrEqual(2 * 6_000 + 500);
    clock.advance(1000);
    for (let i = 0; i < 10_000; i++) limiter.take('same', 1e9);
    expect(limiter.size()).toBeLessThanOrEqual(2);
  });

  it('prune() drops every idle key at once', () => {
    const clock = new Clock();
    const limiter = new RateLimiter({ now: clock.now });
    for (let i = 0; i < 1000; i++) limiter.take(`k${i}`, 60);
    expect(limiter.size()).toBe(1000);
    clock.advance(999);
    expect(limiter.prune()).toBe(0);
    clock.advance(1);
    expect(limiter.prune()).toBe(1000);
    expect(limiter.size()).toBe(0);
  });

  it('eviction at maxKeys drops the key with the least debt, never an abuser being throttled', () => {
    const clock = new Clock();
    const limiter = new RateLimiter({ now: clock.now, maxKeys: 100 });
    while (limiter.take('abuser', 60) === 0); // exhausted: next cell in 60 s
    for (let i = 0; i < 10_000; i++) {
      limiter.take(`spray${i}`, 60);
      expect(outcome(limiter, 'abuser', 60).allowed).toBe(false);
    }
    expect(limiter.size()).toBeLessThanOrEqual(100);
  });
});

describe('RateLimiter cost', () => {
  it('take() micro-benchmark', () => {
    const limiter = new RateLimiter();
    const keys = Array.from({ length: 1000 }, (_, i) => `principal-${i}`);
    const n = 2_000_000;
    for (let i = 0; i < 100_000; i++) limiter.take(keys[i % 1000]!, 1000); // warm-up
    let start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) limiter.take(keys[i % 1000]!, 1000);
    const mixed = Number(process.hrtime.bigint() - start) / n;
    start = process.hrtime.bigint();
    for (let i = 0; i < n; i++) limiter.take('hot', 1000, 2);
    const hot = Number(process.hrtime.bigint() - start) / n;
    console.log(`RateLimiter.take: ${mixed.toFixed(0)} ns/op over 1000 keys, ${hot.toFixed(0)} ns/op on one hot key`);
    expect(mixed).toBeLessThan(5_000);
  });
});
