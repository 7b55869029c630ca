import { describe, expect, it } from 'vitest';
import { parsePolicy } from '../groups/policy.ts';
import { longestBackupGapMs, nextSlot, slotsBetween } from './slots.ts';

const disk = (d: Record<string, unknown>) => parsePolicy({ disk: { retentionDays: 7, ...d } }).disk;
const iso = (s: { at: Date }) => s.at.toISOString();
const at = (s: string) => new Date(s);
const HOUR = 3_600_000;

describe('slots', () => {
  it('anchors syncs at local midnight each day: 7h gives 00:00, 07:00, 14:00, 21:00', () => {
    const p = disk({ syncEvery: '7h', recoveryPoints: { days: ['sun'], times: ['23:59'] } });
    const slots = slotsBetween(p, at('2025-06-03T00:00:00Z'), at('2025-06-05T00:00:00Z'), {
      timeZone: 'UTC',
      kinds: ['sync'],
    });
    expect(slots.map(iso)).toEqual([
      '2025-06-03T07:00:00.000Z',
      '2025-06-03T14:00:00.000Z',
      '2025-06-03T21:00:00.000Z',
      '2025-06-04T00:00:00.000Z',
      '2025-06-04T07:00:00.000Z',
      '2025-06-04T14:00:00.000Z',
      '2025-06-04T21:00:00.000Z',
      '2025-06-05T00:00:00.000Z',
    ]);
  });

  it('takes the interval as (from, to], and lists coinciding kinds recovery point first', () => {
    const p = disk({
      syncEvery: '1h',
      recoveryPoints: { days: ['tue'], times: ['08:00'] },
      expressFull: { days: ['tue'], times: ['08:00'] },
    });
    const slots = slotsBetween(p, at('2025-06-03T07:00:00Z'), at('2025-06-03T08:00:00Z'), {
      timeZone: 'UTC',
    });
    expect(slots.map((s) => `${s.kind}@${iso(s)}`)).toEqual([
      'recovery-point@2025-06-03T08:00:00.000Z',
      'express-full@2025-06-03T08:00:00.000Z',
      'sync@2025-06-03T08:00:00.000Z',
    ]);
    expect(
      slotsBetween(p, at('2025-06-03T08:00:00Z'), at('2025-06-03T08:59:59Z'), { timeZone: 'UTC' }),
    ).toEqual([]);
  });

  it('has no syncs with rp-only, recovery points only on their days', () => {
    const p = disk({ syncEvery: 'rp-only', recoveryPoints: { days: ['mon', 'wed'], times: ['20:00'] } });
    // 2025-06-02 is a Monday.
    const slots = slotsBetween(p, at('2025-06-01T00:00:00Z'), at('2025-06-08T00:00:00Z'), {
      timeZone: 'UTC',
    });
    expect(slots.map((s) => `${s.kind}@${iso(s)}`)).toEqual([
      'recovery-point@2025-06-02T20:00:00.000Z',
      'recovery-point@2025-06-04T20:00:00.000Z',
    ]);
  });

  it('puts times at local wall-clock time in the given zone', () => {
    const p = disk({ syncEvery: 'rp-only', recoveryPoints: { days: ['mon'], times: ['08:00'] } });
    // Summer in Berlin is UTC+2, winter UTC+1; New York summer is UTC-4.
    const june = slotsBetween(p, at('2025-06-01T00:00:00Z'), at('2025-06-08T00:00:00Z'), {
      timeZone: 'Europe/Berlin',
    });
    expect(june.map(iso)).toEqual(['2025-06-02T06:00:00.000Z']);
    const january = slotsBetween(p, at('2025-01-05T00:00:00Z'), at('2025-01-12T00:00:00Z'), {
      timeZone: 'Europe/Berlin',
    });
    expect(january.map(iso)).toEqual(['2025-01-06T07:00:00.000Z']);
    const ny = slotsBetween(p, at('2025-06-01T00:00:00Z'), at('2025-06-08T00:00:00Z'), {
      timeZone: 'America/New_York',
    });
    expect(ny.map(iso)).toEqual(['2025-06-02T12:00:00.000Z']);
  });

  it('runs a time skipped by the spring DST change at the jump, once', () => {
    // Berlin, 2025-03-30: clocks go from 02:00 CET straight to 03:00 CEST (01:00 UTC).
    const p = disk({ syncEvery: '15m', recoveryPoints: { days: ['sun'], times: ['02:30'] } });
    const from = at('2025-03-29T23:00:00Z'); // local midnight
    const to = at('2025-03-30T22:00:00Z'); // next local midnight
    const rp = slotsBetween(p, from, to, { timeZone: 'Europe/Berlin', kinds: ['recovery-point'] });
    expect(rp.map(iso)).toEqual(['2025-03-30T01:00:00.000Z']);
    const syncs = slotsBetween(p, from, to, { timeZone: 'Europe/Berlin', kinds: ['sync'] });
    // 96 wall-clock times; 02:00, 02:15, 02:30, 02:45 do not exist and join 03:00.
    expect(syncs).toHaveLength(92);
    expect(new Set(syncs.map(iso)).size).toBe(92);
    // 01:45 CET, then the jump to 03:00 CEST, then 03:15.
    const i = syncs.map(iso).indexOf('2025-03-30T00:45:00.000Z');
    expect(syncs.slice(i, i + 3).map(iso)).toEqual([
      '2025-03-30T00:45:00.000Z',
      '2025-03-30T01:00:00.000Z',
      '2025-03-30T01:15:00.000Z',
    ]);
  });

  it('runs a time repeated by the autumn DST change at its first occurrence only', () => {
    // Berlin, 2025-10-26: 03:00 CEST (01:00 UTC) becomes 02:00 CET; 02:30 happens twice.
    const p = disk({ syncEvery: '15m', recoveryPoints: { days: ['sun'], times: ['02:30'] } });
    const from = at('2025-10-25T22:00:00Z'); // local midnight (CEST)
    const to = at('2025-10-26T23:00:00Z'); // next local midnight (CET)
    const rp = slotsBetween(p, from, to, { timeZone: 'Europe/Berlin', kinds: ['recovery-point'] });
    expect(rp.map(iso)).toEqual(['2025-10-26T00:30:00.000Z']);
    expect(slotsBetween(p, from, to, { timeZone: 'Europe/Berlin', kinds: ['sync'] })).toHaveLength(96);
  });

  it('finds the next slot across days', () => {
    const p = disk({ syncEvery: 'rp-only', recoveryPoints: { days: ['fri'], times: ['20:00'] } });
    const next = nextSlot(p, at('2025-06-02T09:00:00Z'), { timeZone: 'UTC' });
    expect(next && `${next.kind}@${iso(next)}`).toBe('recovery-point@2025-06-06T20:00:00.000Z');
  });

  it('measures the longest gap between backups, week-end included', () => {
    const rpOnly = disk({
      syncEvery: 'rp-only',
      recoveryPoints: { days: ['mon', 'tue', 'wed', 'thu', 'fri'], times: ['08:00', '12:00', '20:00'] },
    });
    // Friday 20:00 to Monday 08:00.
    expect(longestBackupGapMs(rpOnly, at('2025-06-04T00:00:00Z'), { timeZone: 'UTC' })).toBe(60 * HOUR);
    const synced = disk({ syncEvery: '2h', recoveryPoints: { days: ['mon'], times: ['09:00'] } });
    expect(longestBackupGapMs(synced, at('2025-06-04T00:00:00Z'), { timeZone: 'UTC' })).toBe(2 * HOUR);
  });
});
