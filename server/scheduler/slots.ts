import { DateTime, IANAZone } from 'luxon';
import { DAYS, type DiskPolicy, syncMinutes } from '../groups/policy.ts';

/*
 * When a group's policy wants work done: pure functions of (policy, time zone, interval), no
 * clock and no database, so that the scheduler, `jobs list` and the RPO alert agree and tests
 * can ask about any week.
 *
 * Times in a policy are wall-clock times in one time zone (the server's by default). A local
 * day's slots are its wall-clock times turned into instants:
 * - a time that does not exist that day (the hour skipped when clocks go forward) runs at the
 *   next instant that does exist, i.e. the moment the clocks jumped; several such times become
 *   that one instant, once;
 * - a time that exists twice (the hour repeated when clocks go back) runs at its first
 *   occurrence only.
 */

export type SlotKind = 'sync' | 'recovery-point' | 'express-full' | 'consistency-check';
export interface Slot {
  kind: SlotKind;
  at: Date;
}

/** The kinds that make a backup job; a consistency check is a job of its own. */
export const BACKUP_KINDS: readonly SlotKind[] = ['recovery-point', 'express-full', 'sync'];

/** When several backup slots fall due together, the one job made is of the first kind here. */
export function backupPriority(kind: SlotKind): number {
  return kind === 'recovery-point' ? 3 : kind === 'express-full' ? 2 : kind === 'sync' ? 1 : 0;
}

/** The server's own zone, as an IANA name ("Europe/Berlin", "UTC"). */
export function localTimeZone(): string {
  return DateTime.local().zoneName ?? 'UTC';
}

/** Throws on a name the time-zone database does not know, so a typo fails at start-up. */
export function checkTimeZone(timeZone: string): string {
  if (!IANAZone.isValidZone(timeZone)) throw new Error(`unknown time zone "${timeZone}"`);
  return timeZone;
}

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;

/** A local calendar day, as midnight UTC of the same date (so plain Date arithmetic walks days). */
type LocalDay = number;

function localDayOf(instant: number, zone: IANAZone): LocalDay {
  const local = instant + zone.offset(instant) * MINUTE;
  return Math.floor(local / DAY) * DAY;
}

/**
 * The instant a wall-clock time (`wall`: local date and time written as if it were UTC) happens
 * in `zone`: its first occurrence, or the next valid instant if it does not exist.
 */
export function wallToInstant(wall: number, zone: IANAZone): number {
  // Every offset in force within a day either side: a transition near `wall` shows up here.
  const offsets = [...new Set([-26, 0, 26].map((h) => zone.offset(wall + h * 60 * MINUTE)))];
  const valid = offsets
    .map((o) => wall - o * MINUTE)
    .filter((t) => wall === t + zone.offset(t) * MINUTE)
    .sort((a, b) => a - b);
  if (valid.length > 0) return valid[0]!;
  // A gap: the first whole minute whose wall-clock time is at or after `wall` is the jump.
  let lo = Math.floor((wall - Math.max(...offsets) * MINUTE) / MINUTE);
  let hi = Math.ceil((wall - Math.min(...offsets) * MINUTE) / MINUTE);
  while (lo < hi) {
    const mid = Math.floor((lo + hi) / 2);
    const t = mid * MINUTE;
    if (t + zone.offset(t) * MINUTE >= wall) hi = mid;
    else lo = mid + 1;
  }
  return lo * MINUTE;
}

const minutesOf = (hhmm: string) => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

/** One local day's slots, every kind, in time order (equal instants: priority order). */
function computeDay(disk: DiskPolicy, day: LocalDay, zone: IANAZone): Slot[] {
  const weekday = DAYS[new Date(day).getUTCDay()]!;
  const wanted: [SlotKind, number][] = [];
  const sync = syncMinutes(disk);
  // Anchored at local midnight each day: 7h gives 00:00, 07:00, 14:00, 21:00.
  if (sync !== null) for (let m = 0; m < 24 * 60; m += sync) wanted.push(['sync', m]);
  if (disk.recoveryPoints.days.includes(weekday))
    for (const t of disk.recoveryPoints.times) wanted.push(['recovery-point', minutesOf(t)]);
  if (disk.expressFull?.days.includes(weekday))
    for (const t of disk.expressFull.times) wanted.push(['express-full', minutesOf(t)]);
  if (disk.consistencyCheck.when === 'daily')
    wanted.push(['consistency-check', minutesOf(disk.consistencyCheck.start)]);

  const seen = new Set<string>();
  const slots: { kind: SlotKind; at: number }[] = [];
  for (const [kind, m] of wanted) {
    const at = wallToInstant(day + m * MINUTE, zone);
    // Skipped times collapse onto the jump: once per kind.
    if (seen.has(`${kind}@${at}`)) continue;
    seen.add(`${kind}@${at}`);
    slots.push({ kind, at });
  }
  slots.sort((a, b) => a.at - b.at || backupPriority(b.kind) - backupPriority(a.kind));
  return slots.map((s) => ({ kind: s.kind, at: new Date(s.at) }));
}

/*
 * A tick asks every few seconds about today for every member datasource; members share a few
 * policies. Days are cached by (policy, zone, day); the cache is dropped whole when it grows.
 */
const dayCache = new Map<string, Slot[]>();
const DAY_CACHE_MAX = 5000;

function slotsOfDay(disk: DiskPolicy, policyKey: string, day: LocalDay, zone: IANAZone): Slot[] {
  const key = `${zone.name}|${day}|${policyKey}`;
  let slots = dayCache.get(key);
  if (!slots) {
    if (dayCache.size >= DAY_CACHE_MAX) dayCache.clear();
    slots = computeDay(disk, day, zone);
    dayCache.set(key, slots);
  }
  return slots;
}

/** The fields of a policy that decide its slots. */
function scheduleKey(disk: DiskPolicy): string {
  return JSON.stringify([disk.syncEvery, disk.recoveryPoints, disk.expressFull, disk.consistencyCheck]);
}

/**
 * Every slot in (from, to], in time order; slots of different kinds at one instant are all
 * listed (recovery point first, then express full, then sync). `kinds` narrows the result.
 */
export function slotsBetween(
  disk: DiskPolicy,
  from: Date,
  to: Date,
  opts: { timeZone?: string; kinds?: readonly SlotKind[] } = {},
): Slot[] {
  const zone = IANAZone.create(opts.timeZone ?? localTimeZone());
  if (!zone.isValid) throw new Error(`unknown time zone "${opts.timeZone}"`);
  const lo = from.getTime();
  const hi = to.getTime();
  if (!(hi > lo)) return [];
  const key = scheduleKey(disk);
  const out: Slot[] = [];
  // One day early: a skipped time just before midnight can run just after it.
  for (let day = localDayOf(lo, zone) - DAY; day <= localDayOf(hi, zone); day += DAY) {
    for (const s of slotsOfDay(disk, key, day, zone)) {
      const t = s.at.getTime();
      if (t > lo && t <= hi && (!opts.kinds || opts.kinds.includes(s.kind))) out.push(s);
    }
  }
  // Days are in order already, but a skipped time can spill past midnight into the next one.
  return out.sort(
    (a, b) => a.at.getTime() - b.at.getTime() || backupPriority(b.kind) - backupPriority(a.kind),
  );
}

/** The first slot after `after` (of `kinds`), looking ahead up to `horizonDays`; null if none. */
export function nextSlot(
  disk: DiskPolicy,
  after: Date,
  opts: { timeZone?: string; kinds?: readonly SlotKind[]; horizonDays?: number } = {},
): Slot | null {
  const horizon = new Date(after.getTime() + (opts.horizonDays ?? 8) * DAY);
  // A day at a time: the next sync is usually minutes away; no need to list a week of them.
  for (let from = after; from < horizon; from = new Date(from.getTime() + DAY)) {
    const to = new Date(Math.min(from.getTime() + DAY, horizon.getTime()));
    const [first] = slotsBetween(disk, from, to, opts);
    if (first) return first;
  }
  return null;
}

/**
 * The longest time between consecutive backup slots (sync, recovery point, express full) over
 * the week on either side of `around`: how old the newest recovery point may get while the
 * schedule is kept. Measured on real slots, so a week-end without recovery points and a DST
 * change both count.
 */
export function longestBackupGapMs(disk: DiskPolicy, around: Date, opts: { timeZone?: string } = {}): number {
  const slots = slotsBetween(
    disk,
    new Date(around.getTime() - 7 * DAY),
    new Date(around.getTime() + 7 * DAY),
    { ...opts, kinds: BACKUP_KINDS },
  );
  let longest = 0;
  for (let i = 1; i < slots.length; i++)
    longest = Math.max(longest, slots[i]!.at.getTime() - slots[i - 1]!.at.getTime());
  // A policy always has recovery-point days and times, so two weeks hold at least two slots.
  return longest || 7 * DAY;
}
