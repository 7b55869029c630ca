import { describe, expect, it } from 'vitest';
import { holdfastTags } from '../format/snapshot.ts';
import {
  isoWeek,
  planRetention,
  type RetentionPolicy,
  type RetentionSnapshot,
} from './long-term-retention.ts';

const DAY = 86_400_000;
const day = (iso: string, hour = 1) => new Date(`${iso}T${String(hour).padStart(2, '0')}:00:00Z`);
const tags = (ds: string, rp: string, group = 'g') =>
  holdfastTags({ datasourceId: ds, group, recoveryPointId: rp });

/** One snapshot per day at each of `hours` (UTC), from `first` to `last` inclusive. */
function daily(first: string, last: string, ds = 'ds-1', hours = [1]): RetentionSnapshot[] {
  const out: RetentionSnapshot[] = [];
  for (let t = day(first, 0).getTime(); t <= day(last, 0).getTime(); t += DAY) {
    for (const h of hours) {
      const time = new Date(t + h * 3_600_000);
      const label = `${time.toISOString().slice(0, 13)}`;
      out.push({ id: `${ds}@${label}`, time: time.toISOString(), tags: tags(ds, `rp-${ds}-${label}`) });
    }
  }
  return out;
}

const kept = (plan: ReturnType<typeof planRetention>) => plan.keep.map((k) => k.id);
const POLICY: RetentionPolicy = { daily: 7, weekly: 4, monthly: 12, yearly: 3 };

describe('planRetention: {daily 7, weekly 4, monthly 12, yearly 3} over simulated years', () => {
  it('daily backups 2020-03-10 .. 2024-06-12 (twice a day): exactly the expected 26 points, newest of each bucket', () => {
    const snaps = daily('2020-03-10', '2024-06-12', 'ds-1', [1, 13]);
    const plan = planRetention(snaps, POLICY);
    const at13 = (d: string) => `ds-1@${d}T13`;
    const expected = [
      // daily: the 7 newest days (they cover ISO weeks 2024-W24 and 2024-W23)
      ...['2024-06-12', '2024-06-11', '2024-06-10', '2024-06-09', '2024-06-08', '2024-06-07', '2024-06-06'],
      // weekly: the 4 next weeks not already covered (W22..W19), each its Sunday
      ...['2024-06-02', '2024-05-26', '2024-05-19', '2024-05-12'],
      // monthly: June and May 2024 are covered; the 12 months before, each its last day
      ...['2024-04-30', '2024-03-31', '2024-02-29', '2024-01-31', '2023-12-31', '2023-11-30'],
      ...['2023-10-31', '2023-09-30', '2023-08-31', '2023-07-31', '2023-06-30', '2023-05-31'],
      // yearly: 2024 and 2023 are covered; then 2022, 2021, 2020
      ...['2022-12-31', '2021-12-31', '2020-12-31'],
    ].map(at13);
    expect(kept(plan)).toEqual(expected);
    expect(plan.keep[0]!.reasons).toEqual(['daily:2024-06-12', 'newest']);
    expect(plan.keep[7]!.reasons).toEqual(['weekly:2024-W22']);
    expect(plan.keep[11]!.reasons).toEqual(['monthly:2024-04']);
    expect(plan.keep[23]!.reasons).toEqual(['yearly:2022']);
    expect(plan.keep[0]!.recoveryPointId).toBe('rp-ds-1-2024-06-12T13');
    expect(plan.forget).toHaveLength(snaps.length - 26);
    expect(plan.forget.every((f) => f.reasons.length === 0)).toBe(true);
    expect(plan.softDeleted).toEqual([]);
  });

  it('ending on Saturday 2021-01-02: ISO week 2020-W53 spans the new year, 2020 is a leap year, only 2 older years exist', () => {
    const plan = planRetention(daily('2017-06-01', '2021-01-02'), POLICY);
    const at1 = (d: string) => `ds-1@${d}T01`;
    expect(kept(plan)).toEqual(
      [
        ...['2021-01-02', '2021-01-01', '2020-12-31', '2020-12-30', '2020-12-29', '2020-12-28', '2020-12-27'],
        // covered weeks: 2020-W53 (Dec 28 - Jan 3) and 2020-W52
        ...['2020-12-20', '2020-12-13', '2020-12-06', '2020-11-29'],
        // covered months: 2021-01, 2020-12, 2020-11
        ...['2020-10-31', '2020-09-30', '2020-08-31', '2020-07-31', '2020-06-30', '2020-05-31'],
        ...['2020-04-30', '2020-03-31', '2020-02-29', '2020-01-31', '2019-12-31', '2019-11-30'],
        // covered years: 2021, 2020, 2019; only 2018 and 2017 are left
        ...['2018-12-31', '2017-12-31'],
      ].map(at1),
    );
    expect(plan.keep.find((k) => k.id === at1('2020-12-20'))!.reasons).toEqual(['weekly:2020-W51']);
  });
});

describe('planRetention semantics', () => {
  it('a bucket kept by an earlier rule does not count for a later one (PBS-style, not restic-style)', () => {
    // June 2024, daily. daily 2 keeps Sun 30 and Sat 29 (both 2024-W26).
    // weekly 2 then skips W26 and keeps W25 (Sun 23) and W24 (Sun 16).
    // restic's forget would keep Jun 30 and Jun 23 as its 2 weekly snapshots instead.
    const plan = planRetention(daily('2024-06-01', '2024-06-30'), {
      daily: 2,
      weekly: 2,
      monthly: 0,
      yearly: 0,
    });
    expect(kept(plan)).toEqual([
      'ds-1@2024-06-30T01',
      'ds-1@2024-06-29T01',
      'ds-1@2024-06-23T01',
      'ds-1@2024-06-16T01',
    ]);
  });

  it('monthly takes the newest snapshot of a month even when its week was covered by a weekly point', () => {
    // ISO week 2024-W05 is Mon Jan 29 - Sun Feb 4: weekly keeps Feb 4, so February is covered;
    // January is not, and its newest snapshot is Jan 31.
    const plan = planRetention(daily('2024-01-01', '2024-02-04'), {
      daily: 0,
      weekly: 1,
      monthly: 1,
      yearly: 0,
    });
    expect(kept(plan)).toEqual(['ds-1@2024-02-04T01', 'ds-1@2024-01-31T01']);
    expect(plan.keep[1]!.reasons).toEqual(['monthly:2024-01']);
  });

  it('counts only buckets that contain a snapshot (gaps do not use up the count), independent of now', () => {
    const snaps = ['2024-03-01', '2024-03-05', '2024-03-06', '2024-03-20'].map((d) => ({
      id: d,
      time: day(d),
      tags: tags('ds-1', d),
    }));
    const p = { daily: 3, weekly: 0, monthly: 0, yearly: 0 };
    expect(kept(planRetention(snaps, p, day('2024-03-21')))).toEqual([
      '2024-03-20',
      '2024-03-06',
      '2024-03-05',
    ]);
    expect(kept(planRetention(snaps, p, day('2030-01-01')))).toEqual([
      '2024-03-20',
      '2024-03-06',
      '2024-03-05',
    ]);
  });

  it('keeps the newest of each day in UTC (23:30 and 00:30 UTC are different days)', () => {
    const snaps = [
      { id: 'a', time: '2024-03-01T23:30:00Z', tags: tags('ds-1', 'a') },
      { id: 'b', time: '2024-03-02T00:30:00+02:00', tags: tags('ds-1', 'b') }, // 2024-03-01T22:30Z
      { id: 'c', time: '2024-03-02T00:30:00Z', tags: tags('ds-1', 'c') },
    ];
    const plan = planRetention(snaps, { daily: 5, weekly: 0, monthly: 0, yearly: 0 });
    expect(kept(plan)).toEqual(['c', 'a']);
    expect(plan.forget.map((f) => f.id)).toEqual(['b']);
  });

  it('plans each datasource on its own and always keeps its newest snapshot, even with an all-zero policy', () => {
    const snaps = [
      ...daily('2024-01-01', '2024-01-10', 'ds-a'),
      ...daily('2023-05-01', '2023-05-03', 'ds-b'),
    ];
    const zero = planRetention(snaps, { daily: 0, weekly: 0, monthly: 0, yearly: 0 });
    expect(kept(zero)).toEqual(['ds-a@2024-01-10T01', 'ds-b@2023-05-03T01']);
    expect(zero.keep.map((k) => k.reasons)).toEqual([['newest'], ['newest']]);
    const two = planRetention(snaps, { daily: 2, weekly: 0, monthly: 0, yearly: 0 });
    expect(kept(two)).toEqual([
      'ds-a@2024-01-10T01',
      'ds-a@2024-01-09T01',
      'ds-b@2023-05-03T01',
      'ds-b@2023-05-02T01',
    ]);
  });

  it('takes a policy per datasource/group, keeping everything where there is none', () => {
    const snaps = [
      ...daily('2024-01-01', '2024-01-05', 'ds-a'),
      ...daily('2024-01-01', '2024-01-03', 'ds-b'),
    ];
    const plan = planRetention(snaps, ({ datasourceId, group }) => {
      expect(group).toBe('g');
      return datasourceId === 'ds-a' ? { daily: 1, weekly: 0, monthly: 0, yearly: 0 } : undefined;
    });
    expect(kept(plan)).toEqual([
      'ds-a@2024-01-05T01',
      'ds-b@2024-01-03T01',
      'ds-b@2024-01-02T01',
      'ds-b@2024-01-01T01',
    ]);
  });

  it('keeps foreign snapshots and leaves soft-deleted ones out of the rules', () => {
    const at = new Date('2024-01-04T12:00:00Z');
    const snaps = [
      ...daily('2024-01-01', '2024-01-05'),
      { id: 'restic-own', time: '2020-01-01T00:00:00Z', tags: ['manual'] },
      { id: 'untagged', time: '2020-01-02T00:00:00Z' },
    ];
    // the newest (Jan 5) is deleted: Jan 4 becomes the newest live point
    snaps[4] = { ...snaps[4]!, tags: [...snaps[4]!.tags!, `holdfast-deleted:${at.toISOString()}`] };
    const plan = planRetention(
      snaps,
      { daily: 2, weekly: 0, monthly: 0, yearly: 0 },
      { now: new Date('2024-01-18T12:00:00Z') },
    );
    expect(kept(plan)).toEqual(['restic-own', 'untagged', 'ds-1@2024-01-04T01', 'ds-1@2024-01-03T01']);
    expect(plan.keep.slice(0, 2).map((k) => k.reasons)).toEqual([['foreign'], ['foreign']]);
    expect(plan.forget.map((f) => f.id)).toEqual(['ds-1@2024-01-02T01', 'ds-1@2024-01-01T01']);
    expect(plan.softDeleted).toEqual([
      {
        id: 'ds-1@2024-01-05T01',
        datasourceId: 'ds-1',
        recoveryPointId: 'rp-ds-1-2024-01-05T01',
        time: '2024-01-05T01:00:00.000Z',
        deletedAt: at,
        purgeAfter: new Date('2024-01-18T12:00:00Z'),
        expired: true,
      },
    ]);
    const earlier = planRetention(
      snaps,
      { daily: 2, weekly: 0, monthly: 0, yearly: 0 },
      new Date('2024-01-18T11:59:59Z'),
    );
    expect(earlier.softDeleted[0]!.expired).toBe(false);
  });

  it('breaks time ties by id, so the plan is deterministic', () => {
    const t = '2024-01-01T00:00:00Z';
    const snaps = ['c', 'a', 'b'].map((id) => ({ id, time: t, tags: tags('ds-1', id) }));
    const plan = planRetention(snaps, { daily: 1, weekly: 0, monthly: 0, yearly: 0 });
    expect(kept(plan)).toEqual(['a']);
    expect(plan.forget.map((f) => f.id)).toEqual(['b', 'c']);
  });

  it('refuses a negative or fractional count', () => {
    const snaps = daily('2024-01-01', '2024-01-02');
    expect(() => planRetention(snaps, { daily: -1, weekly: 0, monthly: 0, yearly: 0 })).toThrow(/daily/);
    expect(() => planRetention(snaps, { daily: 1, weekly: 1.5, monthly: 0, yearly: 0 })).toThrow(/weekly/);
  });
});

describe('isoWeek (UTC)', () => {
  it('follows ISO 8601 at year boundaries', () => {
    expect(isoWeek(new Date('2021-01-01T00:00:00Z'))).toEqual({ year: 2020, week: 53 });
    expect(isoWeek(new Date('2021-01-04T00:00:00Z'))).toEqual({ year: 2021, week: 1 });
    expect(isoWeek(new Date('2024-12-30T23:59:59Z'))).toEqual({ year: 2025, week: 1 });
    expect(isoWeek(new Date('2023-01-01T12:00:00Z'))).toEqual({ year: 2022, week: 52 });
    expect(isoWeek(new Date('2024-06-10T00:00:00Z'))).toEqual({ year: 2024, week: 24 });
  });
});
