// Which snapshots a retention policy keeps. Pure: PruneSnapshots plans with it (dry run or not),
// and the property tests in test/storage/retention.test.ts pin down what "keeps" means.

export interface RetentionRules {
  /** Keep the N most recent snapshots. */
  keepLast: number;
  /** Keep the newest snapshot of each of the last N UTC days (today counts as one). */
  keepDailyDays: number;
  /** Keep the newest snapshot of each of the last N ISO weeks, Monday to Sunday, UTC (this week counts as one). */
  keepWeeklyWeeks: number;
}

export interface RetentionCandidate {
  name: string;
  createTime: Date;
  /** Protected (RBD) snapshots are never deleted. */
  protected: boolean;
  /** A snapshot that clones depend on is never deleted. */
  hasClones: boolean;
}

export interface RetentionPlan {
  /** Newest first. */
  kept: string[];
  /** Newest first. */
  deleted: string[];
}

const DAY_MS = 86_400_000;
/** 1970-01-01 was a Thursday; ISO weeks start on Monday, 1970-01-05 is day 4. */
const FIRST_MONDAY = 4;

export function isEmptyPolicy(rules: RetentionRules): boolean {
  return rules.keepLast === 0 && rules.keepDailyDays === 0 && rules.keepWeeklyWeeks === 0;
}

function dayOf(time: Date): number {
  return Math.floor(time.getTime() / DAY_MS);
}

function isoWeekOf(time: Date): number {
  return Math.floor((dayOf(time) - FIRST_MONDAY) / 7);
}

/** Newest first; equal times by name so a plan never depends on input order. */
export function newestFirst<T extends { name: string; createTime: Date }>(snapshots: readonly T[]): T[] {
  return [...snapshots].sort((a, b) => b.createTime.getTime() - a.createTime.getTime() || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * Keeps the newest snapshot of each period in the window (current period and the N-1 before it).
 * Snapshots dated after `now` (clock skew) take no period's place; planRetention keeps them anyway.
 */
function keepNewestPerPeriod(sorted: readonly RetentionCandidate[], periods: number, periodOf: (t: Date) => number, now: Date, keep: Set<string>): void {
  if (periods <= 0) return;
  const current = periodOf(now);
  const seen = new Set<number>();
  for (const snapshot of sorted) {
    if (snapshot.createTime.getTime() > now.getTime()) continue;
    const period = periodOf(snapshot.createTime);
    if (period <= current - periods || seen.has(period)) continue;
    seen.add(period);
    keep.add(snapshot.name);
  }
}

/**
 * A snapshot is kept if any rule keeps it, if it is protected or has clones, or if it is dated
 * in the future (a skewed clock must not make the newest snapshot look deletable). Everything else
 * is deleted. Applying a plan and planning again deletes nothing more.
 */
export function planRetention(snapshots: readonly RetentionCandidate[], rules: RetentionRules, now: Date): RetentionPlan {
  if (isEmptyPolicy(rules)) throw new RangeError('a retention policy that keeps nothing is refused');
  const sorted = newestFirst(snapshots);
  const keep = new Set<string>();
  for (const snapshot of sorted.slice(0, rules.keepLast)) keep.add(snapshot.name);
  keepNewestPerPeriod(sorted, rules.keepDailyDays, dayOf, now, keep);
  keepNewestPerPeriod(sorted, rules.keepWeeklyWeeks, isoWeekOf, now, keep);
  for (const snapshot of sorted) {
    if (snapshot.protected || snapshot.hasClones || snapshot.createTime.getTime() > now.getTime()) keep.add(snapshot.name);
  }
  const plan: RetentionPlan = { kept: [], deleted: [] };
  for (const snapshot of sorted) (keep.has(snapshot.name) ? plan.kept : plan.deleted).push(snapshot.name);
  return plan;
}
