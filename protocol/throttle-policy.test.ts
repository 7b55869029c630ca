import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nextChangeAt, rateAt, type ThrottlePolicy, validateThrottlePolicy } from './throttle-policy.ts';

// Local-time dates in June 2025, a month without DST changes anywhere that has them.
// 1 June 2025 is a Sunday, so 2 June is a Monday and 6 June a Friday.
const at = (day: number, h = 0, m = 0, s = 0, ms = 0) => new Date(2025, 5, day, h, m, s, ms);
const MON = 2;
const TUE = 3;
const WED = 4;
const FRI = 6;
const SAT = 7;
const SUN = 8;
const NEXT_MON = 9;

const KiB = 1024;
const MiB = 1024 * KiB;
const policy: ThrottlePolicy = { workHoursBps: 1 * MiB, nonWorkHoursBps: 4 * MiB, weekendBps: 8 * MiB };

describe('rateAt', () => {
  it('uses the work-hours rate on a work day between start and end', () => {
    expect(rateAt(policy, at(MON, 8))).toBe(1 * MiB);
    expect(rateAt(policy, at(WED, 12, 30))).toBe(1 * MiB);
    expect(rateAt(policy, at(FRI, 17, 59, 59, 999))).toBe(1 * MiB);
  });

  it('uses the non-work rate on a work day before start and from end on', () => {
    expect(rateAt(policy, at(MON, 0))).toBe(4 * MiB);
    expect(rateAt(policy, at(MON, 7, 59, 59, 999))).toBe(4 * MiB);
    expect(rateAt(policy, at(MON, 18))).toBe(4 * MiB);
    expect(rateAt(policy, at(FRI, 23, 59, 59, 999))).toBe(4 * MiB);
  });

  it('uses the weekend rate all day on days that are not work days', () => {
    for (const day of [SAT, SUN]) {
      expect(rateAt(policy, at(day, 0))).toBe(8 * MiB);
      expect(rateAt(policy, at(day, 12))).toBe(8 * MiB);
      expect(rateAt(policy, at(day, 23, 59))).toBe(8 * MiB);
    }
  });

  it('treats start as inclusive and end as exclusive', () => {
    expect(rateAt(policy, at(TUE, 7, 59, 59, 999))).toBe(4 * MiB);
    expect(rateAt(policy, at(TUE, 8, 0, 0, 0))).toBe(1 * MiB);
    expect(rateAt(policy, at(TUE, 17, 59, 59, 999))).toBe(1 * MiB);
    expect(rateAt(policy, at(TUE, 18, 0, 0, 0))).toBe(4 * MiB);
  });

  it('honours custom work days and hours', () => {
    // A Sunday-to-Thursday week with early hours.
    const p: ThrottlePolicy = { ...policy, workDays: [0, 1, 2, 3, 4], workStart: '06:30', workEnd: '15:15' };
    expect(rateAt(p, at(SUN, 10))).toBe(1 * MiB);
    expect(rateAt(p, at(FRI, 10))).toBe(8 * MiB);
    expect(rateAt(p, at(SAT, 10))).toBe(8 * MiB);
    expect(rateAt(p, at(MON, 6, 29))).toBe(4 * MiB);
    expect(rateAt(p, at(MON, 6, 30))).toBe(1 * MiB);
    expect(rateAt(p, at(MON, 15, 14, 59))).toBe(1 * MiB);
    expect(rateAt(p, at(MON, 15, 15))).toBe(4 * MiB);
  });

  it('runs work hours to midnight with workEnd 24:00', () => {
    const p: ThrottlePolicy = { ...policy, workEnd: '24:00' };
    expect(rateAt(p, at(MON, 23, 59, 59, 999))).toBe(1 * MiB);
    expect(rateAt(p, at(TUE, 0))).toBe(4 * MiB);
  });

  it('means unlimited for 0 and for unset rates', () => {
    expect(rateAt({}, at(MON, 12))).toBeUndefined();
    expect(rateAt({ workHoursBps: 0, weekendBps: 2 * MiB }, at(MON, 12))).toBeUndefined();
    expect(rateAt({ workHoursBps: 2 * MiB }, at(MON, 20))).toBeUndefined();
    expect(rateAt({ workHoursBps: 2 * MiB }, at(SAT, 12))).toBeUndefined();
  });

  it('makes every day a weekend day when workDays is empty', () => {
    expect(rateAt({ ...policy, workDays: [] }, at(WED, 12))).toBe(8 * MiB);
  });
});

describe('nextChangeAt', () => {
  it('finds the end and start of work hours on the same day', () => {
    expect(nextChangeAt(policy, at(MON, 3))).toEqual(at(MON, 8));
    expect(nextChangeAt(policy, at(MON, 12))).toEqual(at(MON, 18));
  });

  it('moves past a boundary it is standing on', () => {
    expect(nextChangeAt(policy, at(MON, 8))).toEqual(at(MON, 18));
    expect(nextChangeAt(policy, at(MON, 18))).toEqual(at(TUE, 8));
  });

  it('crosses midnight into the next work day', () => {
    // Evening and early morning share the non-work rate, so midnight is no change.
    expect(nextChangeAt(policy, at(MON, 22))).toEqual(at(TUE, 8));
    expect(nextChangeAt(policy, at(MON, 23, 59, 59, 999))).toEqual(at(TUE, 8));
  });

  it('crosses into and out of the weekend at midnight', () => {
    expect(nextChangeAt(policy, at(FRI, 18))).toEqual(at(SAT, 0));
    expect(nextChangeAt(policy, at(SAT, 0))).toEqual(at(NEXT_MON, 0));
    expect(nextChangeAt(policy, at(SUN, 23, 59))).toEqual(at(NEXT_MON, 0));
    expect(nextChangeAt(policy, at(NEXT_MON, 0))).toEqual(at(NEXT_MON, 8));
  });

  it('skips boundaries where the rate stays the same', () => {
    // Only work hours are limited: Friday evening to Monday morning is one stretch.
    const p: ThrottlePolicy = { workHoursBps: 1 * MiB };
    expect(nextChangeAt(p, at(FRI, 17))).toEqual(at(FRI, 18));
    expect(nextChangeAt(p, at(FRI, 18))).toEqual(at(NEXT_MON, 8));
    expect(nextChangeAt(p, at(SAT, 12))).toEqual(at(NEXT_MON, 8));
  });

  it('crosses a month end', () => {
    // Monday 30 June 2025 evening: the next change is Tuesday 1 July, 08:00.
    expect(nextChangeAt(policy, new Date(2025, 5, 30, 19))).toEqual(new Date(2025, 6, 1, 8));
  });

  it('follows custom work days and hours', () => {
    const p: ThrottlePolicy = { ...policy, workDays: [3], workStart: '09:15', workEnd: '11:45' };
    expect(nextChangeAt(p, at(MON, 12))).toEqual(at(WED, 0)); // weekend rate until Wednesday
    expect(nextChangeAt(p, at(WED, 0))).toEqual(at(WED, 9, 15));
    expect(nextChangeAt(p, at(WED, 9, 15))).toEqual(at(WED, 11, 45));
    expect(nextChangeAt(p, at(WED, 11, 45))).toEqual(at(WED + 1, 0));
  });

  it('always lies after the given time and agrees with rateAt', () => {
    let t = at(1, 0, 0, 0, 1);
    for (let i = 0; i < 40; i++) {
      const next = nextChangeAt(policy, t);
      expect(next.getTime()).toBeGreaterThan(t.getTime());
      const before = new Date(next.getTime() - 1);
      expect(rateAt(policy, before)).toBe(rateAt(policy, t));
      expect(rateAt(policy, next)).not.toBe(rateAt(policy, t));
      t = next;
    }
  });

  it('returns a week ahead when the rate never changes', () => {
    expect(nextChangeAt({ weekendBps: MiB, workDays: [] }, at(MON, 12))).toEqual(at(NEXT_MON, 12));
    expect(nextChangeAt({}, at(MON, 12))).toEqual(at(NEXT_MON, 12));
  });
});

describe('nextChangeAt across DST changes', () => {
  // Node re-reads TZ when it changes; each test file runs in its own process.
  const savedTz = process.env.TZ;
  beforeAll(() => {
    process.env.TZ = 'Europe/Berlin';
  });
  afterAll(() => {
    if (savedTz === undefined) delete process.env.TZ;
    else process.env.TZ = savedTz;
  });
  const iso = (s: string) => new Date(s);

  it('keeps local boundaries over the spring-forward weekend', () => {
    // Sunday 30 March 2025: clocks go from 02:00 CET to 03:00 CEST.
    expect(nextChangeAt(policy, iso('2025-03-30T12:00:00+02:00'))).toEqual(iso('2025-03-31T00:00:00+02:00'));
    expect(nextChangeAt(policy, iso('2025-03-31T00:00:00+02:00'))).toEqual(iso('2025-03-31T08:00:00+02:00'));
  });

  it('changes at the jump when work starts inside the skipped hour', () => {
    const p: ThrottlePolicy = { ...policy, workDays: [0, 1, 2, 3, 4, 5, 6], workStart: '02:30' };
    expect(rateAt(p, iso('2025-03-30T01:59:59+01:00'))).toBe(4 * MiB);
    expect(nextChangeAt(p, iso('2025-03-30T00:00:00+01:00'))).toEqual(iso('2025-03-30T03:00:00+02:00'));
  });

  it('sees the repeated hour when clocks fall back', () => {
    // Sunday 26 October 2025: 03:00 CEST becomes 02:00 CET, so 02:00-02:59 happens twice
    // and a 02:30 work start is crossed twice.
    const p: ThrottlePolicy = { ...policy, workDays: [0, 1, 2, 3, 4, 5, 6], workStart: '02:30' };
    expect(nextChangeAt(p, iso('2025-10-26T02:00:00+02:00'))).toEqual(iso('2025-10-26T02:30:00+02:00'));
    expect(nextChangeAt(p, iso('2025-10-26T02:30:00+02:00'))).toEqual(iso('2025-10-26T02:00:00+01:00'));
    expect(nextChangeAt(p, iso('2025-10-26T02:00:00+01:00'))).toEqual(iso('2025-10-26T02:30:00+01:00'));
  });
});

describe('validateThrottlePolicy', () => {
  it('accepts a full policy and returns a clean copy', () => {
    const input = {
      ...policy,
      workDays: [5, 1, 3],
      workStart: '07:00',
      workEnd: '24:00',
      nonWorkHoursBps: null,
    };
    const out = validateThrottlePolicy(input);
    expect(out).toEqual({
      workHoursBps: MiB,
      weekendBps: 8 * MiB,
      workDays: [1, 3, 5],
      workStart: '07:00',
      workEnd: '24:00',
    });
    expect(out.workDays).not.toBe(input.workDays);
    expect(validateThrottlePolicy({})).toEqual({});
    expect(validateThrottlePolicy({ workHoursBps: 0, workDays: [] })).toEqual({
      workHoursBps: 0,
      workDays: [],
    });
  });

  it.each([
    [null, /the policy must be an object/],
    [[], /the policy must be an object/],
    [
      { workHoursBps: -1 },
      /workHoursBps must be 0 \(unlimited\) or a whole number of bytes per second from 1024 to/,
    ],
    [{ nonWorkHoursBps: 100 }, /nonWorkHoursBps must be .* from 1024 to 1099511627776 \(got 100\)/],
    [{ weekendBps: 1.5e6 + 0.5 }, /weekendBps must be/],
    [{ weekendBps: '1M' }, /weekendBps must be .*\(got "1M"\)/],
    [{ workHoursBps: Number.POSITIVE_INFINITY }, /workHoursBps must be/],
    [{ workHoursBps: 2 ** 41 }, /workHoursBps must be .* to 1099511627776/],
    [
      { workDays: [1, 7] },
      /workDays must be a list of distinct whole numbers from 0 \(Sunday\) to 6 \(Saturday\)/,
    ],
    [{ workDays: [1, 1] }, /workDays must be a list of distinct/],
    [{ workDays: 'Mon-Fri' }, /workDays must be a list/],
    [{ workStart: '8:00' }, /workStart must be a local time "HH:MM" from 00:00 to 23:59 \(got "8:00"\)/],
    [{ workStart: '24:00' }, /workStart must be a local time/],
    [{ workEnd: '18:60' }, /workEnd must be a local time "HH:MM" from 00:01 to 24:00/],
    [
      { workStart: '19:00' },
      /workEnd must be later than workStart \(19:00\) on the same day \(got "18:00"\)/,
    ],
    [{ workStart: '09:00', workEnd: '09:00' }, /workEnd must be later than workStart/],
    [{ workhoursBps: MiB }, /workhoursBps must be absent: known fields are workHoursBps, /],
  ])('rejects %j naming the field and the allowed range', (input, message) => {
    expect(() => validateThrottlePolicy(input)).toThrow(message);
  });
});
