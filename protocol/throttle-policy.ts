/**
 * Bandwidth schedule for an agent's link: one rate for work hours, one for the rest of a
 * work day, one for the weekend, all in the agent's local time (the model System Center
 * DPM offers). Pure functions of (policy, instant), so the throttle and its tests can
 * drive them with any clock.
 */

export interface ThrottlePolicy {
  /** bytes per second; 0 or undefined = unlimited */
  workHoursBps?: number;
  nonWorkHoursBps?: number;
  weekendBps?: number;
  /** work days, 0=Sunday..6=Saturday; default Mon-Fri */
  workDays?: number[];
  /** "HH:MM" local time; default "08:00" - "18:00" */
  workStart?: string;
  workEnd?: string;
}

const DEFAULT_WORK_DAYS: readonly number[] = [1, 2, 3, 4, 5];
const DEFAULT_WORK_START = '08:00';
const DEFAULT_WORK_END = '18:00';

/**
 * Below 1 KiB/s one 8 MiB frame would take over two hours, so a smaller value is almost
 * surely a unit mistake (kbit/s or MB/s typed as bytes); above 1 TiB/s no link exists.
 */
export const MIN_LIMIT_BPS = 1024;
export const MAX_LIMIT_BPS = 2 ** 40;

const RATE_FIELDS = ['workHoursBps', 'nonWorkHoursBps', 'weekendBps'] as const;
const KNOWN_FIELDS = new Set<string>([...RATE_FIELDS, 'workDays', 'workStart', 'workEnd']);
const HHMM = /^([01]\d|2[0-3]):([0-5]\d)$/;

function fail(field: string, allowed: string, got: unknown): never {
  throw new Error(`throttle policy: ${field} must be ${allowed} (got ${JSON.stringify(got) ?? String(got)})`);
}

/**
 * Checks a policy received from the server or an administrator and returns a clean copy.
 * Unknown fields are refused rather than ignored: a misspelt `workhoursBps` would
 * otherwise silently mean "unlimited". `null` counts as unset, as JSON and msgpack
 * encoders turn undefined into null.
 */
export function validateThrottlePolicy(p: unknown): ThrottlePolicy {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) {
    fail('the policy', 'an object', p);
  }
  const input = p as Record<string, unknown>;
  for (const key of Object.keys(input)) {
    if (!KNOWN_FIELDS.has(key))
      fail(key, `absent: known fields are ${[...KNOWN_FIELDS].join(', ')}`, input[key]);
  }
  const out: ThrottlePolicy = {};

  for (const field of RATE_FIELDS) {
    const v = input[field];
    if (v === undefined || v === null) continue;
    const ok =
      typeof v === 'number' && Number.isInteger(v) && (v === 0 || (v >= MIN_LIMIT_BPS && v <= MAX_LIMIT_BPS));
    if (!ok) {
      fail(
        field,
        `0 (unlimited) or a whole number of bytes per second from ${MIN_LIMIT_BPS} to ${MAX_LIMIT_BPS}`,
        v,
      );
    }
    out[field] = v;
  }

  const days = input['workDays'];
  if (days !== undefined && days !== null) {
    const allowed = 'a list of distinct whole numbers from 0 (Sunday) to 6 (Saturday)';
    if (!Array.isArray(days)) fail('workDays', allowed, days);
    const seen = new Set<number>();
    for (const d of days) {
      if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d > 6 || seen.has(d))
        fail('workDays', allowed, days);
      seen.add(d);
    }
    // An empty list is allowed: every day is then a weekend day.
    out.workDays = [...seen].sort((a, b) => a - b);
  }

  const start = input['workStart'];
  if (start !== undefined && start !== null) {
    if (typeof start !== 'string' || !HHMM.test(start))
      fail('workStart', 'a local time "HH:MM" from 00:00 to 23:59', start);
    out.workStart = start;
  }
  const end = input['workEnd'];
  if (end !== undefined && end !== null) {
    // "24:00" lets work hours run to midnight, which "23:59" would miss by a minute.
    if (typeof end !== 'string' || !(HHMM.test(end) || end === '24:00')) {
      fail('workEnd', 'a local time "HH:MM" from 00:01 to 24:00', end);
    }
    out.workEnd = end;
  }
  // Overnight work hours (22:00-06:00) are not supported: the weekend/work-day split
  // would become ambiguous for the hours after midnight.
  const startMin = minutes(out.workStart ?? DEFAULT_WORK_START);
  const endMin = minutes(out.workEnd ?? DEFAULT_WORK_END);
  if (endMin <= startMin) {
    fail(
      'workEnd',
      `later than workStart (${out.workStart ?? DEFAULT_WORK_START}) on the same day`,
      out.workEnd ?? DEFAULT_WORK_END,
    );
  }
  return out;
}

function minutes(hhmm: string): number {
  const [h, m] = hhmm.split(':');
  return Number(h) * 60 + Number(m);
}

/** The limit in force at `when` (local time), in bytes per second; undefined = unlimited. */
export function rateAt(policy: ThrottlePolicy, when: Date): number | undefined {
  const workDays = policy.workDays ?? DEFAULT_WORK_DAYS;
  let bps: number | undefined;
  if (!workDays.includes(when.getDay())) {
    bps = policy.weekendBps;
  } else {
    // Start inclusive, end exclusive: at 18:00:00 sharp the evening rate already applies.
    const t = when.getHours() * 60 + when.getMinutes();
    const inWork =
      t >= minutes(policy.workStart ?? DEFAULT_WORK_START) && t < minutes(policy.workEnd ?? DEFAULT_WORK_END);
    bps = inWork ? policy.workHoursBps : policy.nonWorkHoursBps;
  }
  return bps ? bps : undefined;
}

/**
 * The next instant after `when` at which rateAt gives a different value. Boundaries where
 * the value stays the same (Friday midnight when evening and weekend rates are equal) are
 * skipped, so a waiting transfer wakes only when it has to. A policy whose rate never
 * changes gets a time a week ahead, which is merely a harmless re-check.
 *
 * The wall clock moves forward steadily except at DST transitions, so the answer is
 * either a wall-clock boundary (work start, work end, midnight) at the current UTC
 * offset, or a transition itself: clocks jumping past a work start of 02:30 change the
 * rate at the jump, and clocks falling back from 03:00 to 02:00 can re-enter the time
 * before it. Hence: find the next boundary assuming the offset holds; if the offset
 * changes before it, look at the transition and carry on from there with the new offset.
 */
export function nextChangeAt(policy: ThrottlePolicy, when: Date): Date {
  const current = rateAt(policy, when);
  let from = when;
  // Zones change offset at most twice a year; the guard only bounds a pathological zone.
  for (let guard = 0; guard < 8; guard++) {
    const boundary = nextBoundaryAtFixedOffset(policy, from, current);
    const transition = offsetChangeIn(from, boundary);
    if (!transition) return boundary;
    if (rateAt(policy, transition) !== current) return transition;
    from = transition;
  }
  return new Date(when.getTime() + WEEK_MS);
}

const MINUTE_MS = 60_000;
const WEEK_MS = 7 * 24 * 60 * MINUTE_MS;

/** The first boundary after `from` whose rate differs from `current`, if the UTC offset stays as at `from`. */
function nextBoundaryAtFixedOffset(policy: ThrottlePolicy, from: Date, current: number | undefined): Date {
  const start = minutes(policy.workStart ?? DEFAULT_WORK_START);
  const end = minutes(policy.workEnd ?? DEFAULT_WORK_END);
  const offsetMs = from.getTimezoneOffset() * MINUTE_MS;
  // The local calendar date of `from`, read through the UTC getters of a shifted instant.
  const local = new Date(from.getTime() - offsetMs);
  const y = local.getUTCFullYear();
  const mo = local.getUTCMonth();
  const d = local.getUTCDate();
  // Every boundary is a day's work start, work end or midnight, and the schedule repeats
  // weekly, so today plus seven days holds the answer if there is one. Start < end <=
  // 24:00, so each day's candidates come in time order.
  for (let i = 0; i <= 7; i++) {
    for (const minute of [start, end, 24 * 60]) {
      const c = new Date(Date.UTC(y, mo, d + i, 0, minute) + offsetMs);
      if (c.getTime() > from.getTime() && rateAt(policy, c) !== current) return c;
    }
  }
  return new Date(from.getTime() + WEEK_MS);
}

/** The first instant in (from, until] with a UTC offset other than at `from`, if any. */
function offsetChangeIn(from: Date, until: Date): Date | undefined {
  const offset = from.getTimezoneOffset();
  if (until.getTimezoneOffset() === offset) return undefined;
  // Bisect to the millisecond: about 30 steps over a week.
  let lo = from.getTime();
  let hi = until.getTime();
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (new Date(mid).getTimezoneOffset() === offset) lo = mid;
    else hi = mid;
  }
  return new Date(hi);
}
