import { describe, expect, it } from 'vitest';
import { AppError } from '../errors.ts';
import { formatMinutes, parsePolicy, parseSyncEvery, syncMinutes } from './policy.ts';

const disk = { retentionDays: 14, recoveryPoints: { days: ['mon'], times: ['08:00'] } };
const messageOf = (input: unknown, prefix?: string): string => {
  try {
    parsePolicy(input, prefix);
  } catch (err) {
    expect(err).toBeInstanceOf(AppError);
    expect((err as AppError).code).toBe('INVALID_INPUT');
    return (err as AppError).message;
  }
  throw new Error(`accepted: ${JSON.stringify(input)}`);
};

describe('parsePolicy', () => {
  it('fills defaults and writes values in one canonical form', () => {
    expect(
      parsePolicy({
        disk: {
          ...disk,
          syncEvery: 90,
          recoveryPoints: { days: ['fri', 'mon', 'fri'], times: ['20:00', '08:00', '20:00'] },
        },
      }),
    ).toEqual({
      disk: {
        retentionDays: 14,
        syncEvery: '1h30m',
        recoveryPoints: { days: ['mon', 'fri'], times: ['08:00', '20:00'] },
        expressFull: null,
        consistencyCheck: { when: 'needed' },
      },
      online: { enabled: false },
    });
    expect(parsePolicy({ disk: { ...disk, syncEvery: 'rp-only' } }).disk.syncEvery).toBe('rp-only');
    expect(parsePolicy({ disk: { ...disk, syncEvery: '24h' } }).disk.syncEvery).toBe('24h');
  });

  it('names the field, the allowed range and the value given', () => {
    expect(messageOf({ disk: { ...disk, retentionDays: 500 } }, 'groups[1]')).toBe(
      'groups[1].disk.retentionDays: must be a whole number of days from 1 to 448, got 500',
    );
    expect(messageOf({ disk: { ...disk, retentionDays: 2.5 } })).toBe(
      'disk.retentionDays: must be a whole number of days from 1 to 448, got 2.5',
    );
    expect(messageOf({ disk: { ...disk, retentionDays: '14' } })).toBe(
      'disk.retentionDays: must be a whole number of days from 1 to 448, got "14"',
    );
    expect(messageOf({ disk: { ...disk, syncEvery: '10m' } })).toBe(
      'disk.syncEvery: must be from 15m to 24h, or "rp-only", got "10m"',
    );
    expect(messageOf({ disk: { ...disk, syncEvery: '25h' } })).toBe(
      'disk.syncEvery: must be from 15m to 24h, or "rp-only", got "25h"',
    );
    expect(messageOf({ disk: { ...disk, recoveryPoints: { days: ['monday'], times: ['8:00'] } } })).toBe(
      'disk.recoveryPoints.days[0]: must be one of sun, mon, tue, wed, thu, fri, sat, got "monday"; ' +
        'disk.recoveryPoints.times[0]: must be a time of day "HH:MM" (00:00 to 23:59), got "8:00"',
    );
    expect(messageOf({ disk: { ...disk, recoveryPoints: { days: [], times: ['08:00'] } } })).toBe(
      'disk.recoveryPoints.days: must name at least one day',
    );
    const times = Array.from(
      { length: 25 },
      (_, i) => `${String(i % 24).padStart(2, '0')}:${i < 24 ? '00' : '30'}`,
    );
    expect(messageOf({ disk: { ...disk, recoveryPoints: { days: ['mon'], times } } })).toBe(
      'disk.recoveryPoints.times: must name at most 24 different times',
    );
  });

  it('says what is missing and what is unknown', () => {
    expect(messageOf({})).toBe('disk: is required');
    expect(messageOf({ disk: {} })).toBe('disk.retentionDays: is required; disk.recoveryPoints: is required');
    expect(messageOf({ disk: { ...disk, retention: 3 }, extra: true })).toBe(
      'disk: unknown field "retention"; unknown field "extra"',
    );
    expect(messageOf({ disk: { ...disk, consistencyCheck: { when: 'daily' } } })).toBe(
      'disk.consistencyCheck.start: is required; disk.consistencyCheck.maxHours: is required',
    );
    expect(
      messageOf({ disk: { ...disk, consistencyCheck: { when: 'daily', start: '22:00', maxHours: 30 } } }),
    ).toBe('disk.consistencyCheck.maxHours: must be a whole number of hours from 1 to 24, got 30');
    expect(messageOf({ disk: { ...disk, consistencyCheck: { when: 'weekly' } } })).toContain(
      'disk.consistencyCheck.when: must be { when: needed } or { when: daily',
    );
  });

  it('checks online protection only as far as it is enabled', () => {
    expect(parsePolicy({ disk, online: { enabled: false } }).online).toEqual({ enabled: false });
    expect(messageOf({ disk, online: { enabled: true } })).toBe(
      'online.schedule: is required when online protection is enabled; ' +
        'online.retention: is required when online protection is enabled',
    );
    expect(
      messageOf({ disk, online: { enabled: true, schedule: { daily: ['21:00'] }, retention: { daily: 0 } } }),
    ).toBe('online.retention: must keep at least one point (daily, weekly, monthly or yearly)');
    expect(
      messageOf({
        disk,
        online: { enabled: true, schedule: { daily: ['01:00', '02:00', '03:00'] }, retention: { daily: 1 } },
      }),
    ).toContain('online.schedule');
    expect(
      messageOf({
        disk,
        online: { enabled: 'yes', schedule: { daily: ['21:00'] }, retention: { yearly: 100 } },
      }),
    ).toBe(
      'online.enabled: must be true or false; online.retention.yearly: must be a whole number of yearly points from 0 to 99, got 100',
    );
    const weekly = parsePolicy({
      disk,
      online: {
        enabled: true,
        schedule: { weekly: { days: ['sat'], times: ['21:00'] } },
        retention: { weekly: 12 },
      },
    }).online;
    expect(weekly).toEqual({
      enabled: true,
      schedule: { weekly: { days: ['sat'], times: ['21:00'] } },
      retention: { daily: 0, weekly: 12, monthly: 0, yearly: 0 },
    });
  });
});

describe('sync interval text', () => {
  it('reads and writes durations', () => {
    expect(parseSyncEvery('2h30m')).toBe(150);
    expect(parseSyncEvery('rp-only')).toBeNull();
    expect(() => parseSyncEvery('2d')).toThrow(
      'must be a duration like 15m, 1h or 2h30m, or "rp-only", got "2d"',
    );
    expect([15, 60, 90, 1440].map(formatMinutes)).toEqual(['15m', '1h', '1h30m', '24h']);
    expect(syncMinutes(parsePolicy({ disk: { ...disk, syncEvery: '45m' } }).disk)).toBe(45);
  });
});
