import { parseGoTime } from '../format/go-time.ts';
import { parseHoldfastTags } from '../format/snapshot.ts';
import { DEFAULT_SOFT_DELETE_WINDOW_MS, softDeletedAt } from './soft-delete.ts';

/**
 * Long-term (vault) retention: which snapshots (recovery points) a daily/weekly/monthly/yearly
 * policy keeps. Pure: no repository, no database, no clock but the `now` passed in.
 *
 * Semantics (docs/vault-retention.md has the full text and the comparison with restic):
 *
 * - Snapshots are grouped per datasource (tag `ds:<id>`); each group is planned on its own.
 *   Snapshots without Holdfast's `ds:` tag (e.g. `restic backup` into the vault) are always
 *   kept (reason `foreign`): Holdfast does not delete what it did not write.
 * - Soft-deleted snapshots (tag `holdfast-deleted:<time>`) take no part: they are neither kept
 *   nor forgotten by the rules and count for no bucket. They are listed in `softDeleted`, with
 *   `expired` computed from `now` and the soft-delete window; purging them is the caller's call.
 * - Buckets are UTC calendar days, ISO 8601 weeks (Monday-Sunday, week-numbering year),
 *   calendar months and calendar years. Only buckets that contain a snapshot count, so a
 *   datasource that stops being backed up keeps its points (the plan does not age by `now`).
 * - Rules apply in order daily, weekly, monthly, yearly, as Proxmox Backup Server does. Each
 *   walks the group's snapshots newest first and keeps the newest snapshot of each of the
 *   next N buckets, skipping every bucket that already holds a snapshot kept by an earlier
 *   rule (such a bucket is covered and does not count towards N). So {daily 7, weekly 4}
 *   keeps 7 daily points plus 4 weekly points in weeks older than those days.
 * - The newest snapshot of every datasource is always kept (reason `newest`), whatever the
 *   policy (even all zeros).
 * - Ties (equal times) are broken by snapshot id, so the plan is deterministic.
 */

export interface RetentionPolicy {
  daily: number;
  weekly: number;
  monthly: number;
  yearly: number;
}

export interface RetentionSnapshot {
  id: string;
  /** RFC 3339 (as in a snapshot file) or a Date. */
  time: string | Date;
  tags?: string[];
}

export type RetentionRule = 'daily' | 'weekly' | 'monthly' | 'yearly';
export const RETENTION_RULES: readonly RetentionRule[] = ['daily', 'weekly', 'monthly', 'yearly'];

export interface RetentionDecision {
  id: string;
  /** The datasource (undefined for a foreign snapshot). */
  datasourceId?: string;
  recoveryPointId?: string;
  time: string;
  /**
   * Why it is kept: `daily:2024-06-12`, `weekly:2024-W24`, `monthly:2024-06`, `yearly:2024`,
   * `newest`, `foreign`. Empty for a forgotten snapshot.
   */
  reasons: string[];
}

export interface SoftDeletedEntry {
  id: string;
  datasourceId?: string;
  recoveryPointId?: string;
  time: string;
  deletedAt: Date;
  purgeAfter: Date;
  /** purgeAfter <= now: past its recovery window. */
  expired: boolean;
}

export interface RetentionPlan {
  /** Newest first within each datasource. */
  keep: RetentionDecision[];
  forget: RetentionDecision[];
  softDeleted: SoftDeletedEntry[];
}

/**
 * A policy for every datasource, or one per datasource (e.g. from its protection group, the
 * `group:` tag). `undefined` from the function keeps every snapshot of that datasource.
 */
export type RetentionPolicyInput =
  | RetentionPolicy
  | ((datasource: { datasourceId: string; group?: string }) => RetentionPolicy | undefined);

export interface PlanRetentionOptions {
  /** For `softDeleted[].expired`; default: the current time. */
  now?: Date;
  /** How long a soft-deleted snapshot stays recoverable; default 14 days. */
  softDeleteWindowMs?: number;
}

interface Item {
  id: string;
  ns: bigint;
  time: string;
  datasourceId?: string;
  group?: string;
  recoveryPointId?: string;
}

export function planRetention(
  snapshots: RetentionSnapshot[],
  policy: RetentionPolicyInput,
  now: Date | PlanRetentionOptions = {},
): RetentionPlan {
  const options = now instanceof Date ? { now } : now;
  const at = options.now ?? new Date();
  const windowMs = options.softDeleteWindowMs ?? DEFAULT_SOFT_DELETE_WINDOW_MS;
  const plan: RetentionPlan = { keep: [], forget: [], softDeleted: [] };
  const groups = new Map<string, Item[]>();

  for (const s of snapshots) {
    const time = typeof s.time === 'string' ? s.time : s.time.toISOString();
    const tags = parseHoldfastTags(s.tags);
    const item: Item = {
      id: s.id,
      ns: parseGoTime(time),
      time,
      ...(tags?.datasourceId !== undefined && { datasourceId: tags.datasourceId }),
      ...(tags?.group !== undefined && { group: tags.group }),
      ...(tags?.recoveryPointId !== undefined && { recoveryPointId: tags.recoveryPointId }),
    };
    const deletedAt = softDeletedAt(s.tags);
    if (deletedAt) {
      const purgeAfter = new Date(deletedAt.getTime() + windowMs);
      const { reasons: _, ...base } = decision(item, []);
      plan.softDeleted.push({
        ...base,
        deletedAt,
        purgeAfter,
        expired: purgeAfter.getTime() <= at.getTime(),
      });
      continue;
    }
    if (item.datasourceId === undefined) {
      plan.keep.push(decision(item, ['foreign']));
      continue;
    }
    const list = groups.get(item.datasourceId);
    if (list) list.push(item);
    else groups.set(item.datasourceId, [item]);
  }

  for (const [datasourceId, items] of groups) {
    items.sort(newestFirst);
    const group = items.find((i) => i.group !== undefined)?.group;
    const p =
      typeof policy === 'function' ? policy({ datasourceId, ...(group !== undefined && { group }) }) : policy;
    const reasons = new Map<string, string[]>();
    if (p) {
      validatePolicy(p);
      applyRules(items, p, reasons);
    } else {
      for (const item of items) reasons.set(item.id, ['no policy']);
    }
    const newest = items[0]!;
    const r = reasons.get(newest.id) ?? [];
    r.push('newest');
    reasons.set(newest.id, r);
    for (const item of items) {
      const why = reasons.get(item.id);
      if (why) plan.keep.push(decision(item, why));
      else plan.forget.push(decision(item, []));
    }
  }
  return plan;
}

/** The PBS-style rule pass: each rule skips buckets already covered by an earlier rule. */
function applyRules(items: Item[], policy: RetentionPolicy, reasons: Map<string, string[]>): void {
  const kept: Item[] = [];
  for (const rule of RETENTION_RULES) {
    const n = policy[rule];
    if (n <= 0) continue;
    const bucketOf = BUCKETS[rule];
    const covered = new Set(kept.map((i) => bucketOf(i.ns)));
    const taken = new Set<string>();
    for (const item of items) {
      if (taken.size >= n) break;
      const bucket = bucketOf(item.ns);
      if (covered.has(bucket) || taken.has(bucket)) continue;
      // items are newest first: the first one seen in a bucket is its newest
      taken.add(bucket);
      if (reasons.has(item.id)) continue; // cannot happen (its bucket would be covered), kept for safety
      reasons.set(item.id, [`${rule}:${bucket}`]);
      kept.push(item);
    }
  }
}

function validatePolicy(p: RetentionPolicy): void {
  for (const rule of RETENTION_RULES) {
    const n = p[rule];
    if (!Number.isSafeInteger(n) || n < 0)
      throw new RangeError(`retention.${rule} must be a whole number >= 0, got ${String(n)}`);
  }
}

function decision(item: Item, reasons: string[]): RetentionDecision {
  return {
    id: item.id,
    ...(item.datasourceId !== undefined && { datasourceId: item.datasourceId }),
    ...(item.recoveryPointId !== undefined && { recoveryPointId: item.recoveryPointId }),
    time: item.time,
    reasons,
  };
}

function newestFirst(a: Item, b: Item): number {
  if (a.ns !== b.ns) return a.ns > b.ns ? -1 : 1;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

function utcDate(ns: bigint): Date {
  // floor division: times before 1970 are negative
  let ms = ns / 1_000_000n;
  if (ns < 0n && ns % 1_000_000n !== 0n) ms -= 1n;
  return new Date(Number(ms));
}

const pad = (n: number, w = 2) => String(n).padStart(w, '0');

/** The UTC bucket labels: `2024-06-12`, `2024-W24`, `2024-06`, `2024`. */
export const BUCKETS: Record<RetentionRule, (ns: bigint) => string> = {
  daily: (ns) => utcDate(ns).toISOString().slice(0, 10),
  weekly: (ns) => {
    const { year, week } = isoWeek(utcDate(ns));
    return `${pad(year, 4)}-W${pad(week)}`;
  },
  monthly: (ns) => utcDate(ns).toISOString().slice(0, 7),
  yearly: (ns) => utcDate(ns).toISOString().slice(0, 4),
};

/** ISO 8601 week-numbering year and week of a UTC instant. */
export function isoWeek(d: Date): { year: number; week: number } {
  const day = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const dow = day.getUTCDay() || 7; // Monday 1 .. Sunday 7
  day.setUTCDate(day.getUTCDate() + 4 - dow); // the Thursday of this week decides the year
  const year = day.getUTCFullYear();
  const jan1 = Date.UTC(year, 0, 1);
  const week = Math.floor((day.getTime() - jan1) / 86_400_000 / 7) + 1;
  return { year, week };
}
