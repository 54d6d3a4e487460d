import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { planRetention, type RetentionCandidate, type RetentionRules } from '../../src/storage/retention.js';

const NOW = new Date('2026-11-22T10:00:00Z'); // a Sunday: the ISO week began on Monday 16 November

/** Independent oracle: calendar arithmetic through Date's UTC getters, not day numbers. */
function utcDayStart(time: Date): number {
  return Date.UTC(time.getUTCFullYear(), time.getUTCMonth(), time.getUTCDate());
}
function isoWeekStart(time: Date): number {
  const mondayOffset = (time.getUTCDay() + 6) % 7;
  return utcDayStart(time) - mondayOffset * 86_400_000;
}

/** What each rule on its own requires, computed the slow way. */
function required(snapshots: readonly RetentionCandidate[], rules: RetentionRules, now: Date): Set<string> {
  const byTime = [...snapshots].sort((a, b) => b.createTime.getTime() - a.createTime.getTime() || a.name.localeCompare(b.name));
  const keep = new Set(byTime.slice(0, rules.keepLast).map((s) => s.name));
  const windows: [number, (t: Date) => number, number][] = [
    [rules.keepDailyDays, utcDayStart, 86_400_000],
    [rules.keepWeeklyWeeks, isoWeekStart, 7 * 86_400_000],
  ];
  for (const [count, startOf, length] of windows) {
    for (let i = 0; i < count; i++) {
      const start = startOf(now) - i * length;
      const newest = byTime.find((s) => startOf(s.createTime) === start && s.createTime.getTime() <= now.getTime());
      if (newest) keep.add(newest.name);
    }
  }
  return keep;
}

const candidates = fc
  .uniqueArray(
    fc.record({
      name: fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,11}$/),
      // Mostly the last ~100 days, some in the future (clock skew), some at the same millisecond.
      createTime: fc.integer({ min: -100 * 86_400_000, max: 2 * 86_400_000 }).map((offset) => new Date(NOW.getTime() + offset)),
      // About one in eight protected, one in ten with clones.
      protected: fc.integer({ min: 0, max: 7 }).map((n) => n === 0),
      hasClones: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
    }),
    { selector: (s) => s.name, maxLength: 60 },
  );

const rules = fc
  .record({
    keepLast: fc.integer({ min: 0, max: 10 }),
    keepDailyDays: fc.integer({ min: 0, max: 40 }),
    keepWeeklyWeeks: fc.integer({ min: 0, max: 20 }),
  })
  .filter((r) => r.keepLast + r.keepDailyDays + r.keepWeeklyWeeks > 0);

describe('planRetention', () => {
  it('keeps exactly what the rules require, plus protected, cloned and future-dated snapshots', () => {
    fc.assert(
      fc.property(candidates, rules, (snapshots, policy) => {
        const plan = planRetention(snapshots, policy, NOW);
        const expected = required(snapshots, policy, NOW);
        for (const s of snapshots) if (s.protected || s.hasClones || s.createTime > NOW) expected.add(s.name);
        expect(new Set(plan.kept)).toEqual(expected);
        expect([...plan.kept, ...plan.deleted].sort()).toEqual(snapshots.map((s) => s.name).sort());
      }),
      { numRuns: 500 },
    );
  });

  it('never deletes a protected snapshot or one with clones', () => {
    fc.assert(
      fc.property(candidates, rules, (snapshots, policy) => {
        const deleted = new Set(planRetention(snapshots, policy, NOW).deleted);
        for (const s of snapshots) if (s.protected || s.hasClones) expect(deleted.has(s.name)).toBe(false);
      }),
    );
  });

  it('running it twice deletes nothing more', () => {
    fc.assert(
      fc.property(candidates, rules, (snapshots, policy) => {
        const first = planRetention(snapshots, policy, NOW);
        const survivors = snapshots.filter((s) => first.kept.includes(s.name));
        expect(planRetention(survivors, policy, NOW).deleted).toEqual([]);
      }),
    );
  });

  it('lists both sides newest first, independent of input order', () => {
    fc.assert(
      fc.property(candidates, rules, (snapshots, policy) => {
        const plan = planRetention(snapshots, policy, NOW);
        const reversed = planRetention([...snapshots].reverse(), policy, NOW);
        expect(reversed).toEqual(plan);
        const time = new Map(snapshots.map((s) => [s.name, s.createTime.getTime()]));
        for (const side of [plan.kept, plan.deleted]) {
          for (let i = 1; i < side.length; i++) expect(time.get(side[i - 1] ?? '')).toBeGreaterThanOrEqual(time.get(side[i] ?? '') ?? 0);
        }
      }),
    );
  });

  it('keeps the newest of each day and ISO week across a month boundary and a week starting Monday', () => {
    const at = (iso: string, name: string): RetentionCandidate => ({ name, createTime: new Date(iso), protected: false, hasClones: false });
    const snapshots = [
      at('2026-11-22T09:00:00Z', 'sun-late'),
      at('2026-11-22T01:00:00Z', 'sun-early'),
      at('2026-11-16T00:00:00Z', 'mon-midnight'), // first instant of this ISO week
      at('2026-11-15T23:59:59Z', 'last-sun'), // last instant of the previous week
      at('2026-11-15T12:00:00Z', 'last-sun-noon'),
      at('2026-10-31T12:00:00Z', 'october'),
    ];
    expect(planRetention(snapshots, { keepLast: 0, keepDailyDays: 1, keepWeeklyWeeks: 0 }, NOW)).toEqual({
      kept: ['sun-late'],
      deleted: ['sun-early', 'mon-midnight', 'last-sun', 'last-sun-noon', 'october'],
    });
    expect(planRetention(snapshots, { keepLast: 0, keepDailyDays: 0, keepWeeklyWeeks: 2 }, NOW).kept).toEqual(['sun-late', 'last-sun']);
    expect(planRetention(snapshots, { keepLast: 2, keepDailyDays: 8, keepWeeklyWeeks: 0 }, NOW).kept).toEqual(['sun-late', 'sun-early', 'mon-midnight', 'last-sun']);
    expect(planRetention(snapshots, { keepLast: 0, keepDailyDays: 0, keepWeeklyWeeks: 4 }, NOW).kept).toEqual(['sun-late', 'last-sun', 'october']);
  });

  it('refuses a policy that keeps nothing', () => {
    expect(() => planRetention([], { keepLast: 0, keepDailyDays: 0, keepWeeklyWeeks: 0 }, NOW)).toThrow(RangeError);
  });
});
