import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openTestDatabase } from '../chunk-store/test-database.test-helpers.ts';
import { agents, datasources, jobs } from '../db/schema.ts';
import type { BackupParams } from '../jobs/job-repo.ts';
import {
  addAgent,
  addDatasourceRow,
  addGroup,
  addMember,
  DAY,
  finishQueued,
  HOUR,
  jobsOf,
  MINUTE,
} from './fixtures.test-helpers.ts';
import { Scheduler, type TickReport } from './scheduler.ts';
import { upcomingRuns } from './upcoming.ts';

/*
 * The scheduler against a real database (PGlite, or PostgreSQL with HOLDFAST_TEST_DATABASE_URL)
 * and a simulated clock: tick(now) is called with the times a server would have seen.
 */
let dir: string;
let database: Awaited<ReturnType<typeof openTestDatabase>>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-scheduler-'));
  database = await openTestDatabase(dir);
});
afterAll(async () => {
  await database?.drop();
  await rm(dir, { recursive: true, force: true });
});
// Each test's datasources leave their groups, so the next test's ticks schedule only its own.
afterEach(async () => {
  await database.db.update(datasources).set({ groupId: null });
});

const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri'];
const OFFICE = {
  syncEvery: '15m',
  recoveryPoints: { days: WEEKDAYS, times: ['08:00', '12:00', '20:00'] },
};

const mine = (r: TickReport, dsId: string) => r.queued.filter((q) => q.datasourceId === dsId);
const originOf = (params: unknown) => (params as BackupParams).origin;

describe('scheduler', () => {
  it('makes exactly the jobs of a week: syncs every 15 minutes, recovery points on weekdays', async () => {
    const { db } = database;
    const { ds, group } = await addMember(db, OFFICE);
    const scheduler = new Scheduler({ db, timeZone: 'UTC' });
    const start = Date.parse('2025-06-01T00:00:00Z'); // a Sunday
    expect((await scheduler.tick(new Date(start))).queued).toEqual([]); // first tick: nothing owed

    // What should happen, worked out from the calendar, not from the slot code.
    const expected: string[] = [];
    for (let t = start + 5 * MINUTE; t <= start + 7 * DAY; t += 5 * MINUTE) {
      const d = new Date(t);
      if (d.getUTCMinutes() % 15 !== 0) continue;
      const hhmm = d.toISOString().slice(11, 16);
      const weekday = d.getUTCDay() >= 1 && d.getUTCDay() <= 5;
      const rp = weekday && ['08:00', '12:00', '20:00'].includes(hhmm);
      expected.push(`${rp ? 'recovery-point' : 'sync'}@${d.toISOString()}`);
    }
    expect(expected.filter((e) => e.startsWith('recovery-point'))).toHaveLength(15);
    expect(expected.filter((e) => e.startsWith('sync'))).toHaveLength(7 * 96 - 15);

    const made: string[] = [];
    for (let t = start + 5 * MINUTE; t <= start + 7 * DAY; t += 5 * MINUTE) {
      const report = await scheduler.tick(new Date(t));
      for (const q of mine(report, ds.id)) {
        expect(q.slotAt.getTime()).toBe(t);
        made.push(`${q.kind}@${q.slotAt.toISOString()}`);
      }
      await finishQueued(db, ds.id); // as if the job ran at once
    }
    expect(made).toEqual(expected);

    const rows = await jobsOf(db, ds.id);
    expect(rows).toHaveLength(7 * 96);
    expect(rows.filter((j) => originOf(j.params) === 'recovery-point')).toHaveLength(15);
    for (const j of rows) {
      expect(j).toMatchObject({ type: 'backup', trigger: 'schedule', groupId: group.id, maxRetries: 3 });
      expect((j.params as BackupParams).full).toBe(false);
    }
  });

  it('makes one job for a whole outage, of the most important kind missed', async () => {
    const { db } = database;
    const { ds } = await addMember(db, OFFICE);
    const scheduler = new Scheduler({ db, timeZone: 'UTC' });
    await scheduler.tick(new Date('2025-06-02T05:00:00Z')); // a Monday
    // Six hours without a tick: 24 syncs and the 08:00 recovery point were due.
    const report = await scheduler.tick(new Date('2025-06-02T11:00:00Z'));
    expect(mine(report, ds.id).map((q) => [q.kind, q.slotAt.toISOString()])).toEqual([
      ['recovery-point', '2025-06-02T11:00:00.000Z'],
    ]);
    await finishQueued(db, ds.id);
    expect(mine(await scheduler.tick(new Date('2025-06-02T11:05:00Z')), ds.id)).toEqual([]);
    expect(mine(await scheduler.tick(new Date('2025-06-02T11:15:00Z')), ds.id).map((q) => q.kind)).toEqual([
      'sync',
    ]);
    expect(await jobsOf(db, ds.id)).toHaveLength(2);
  });

  it('lets a queued backup cover the slots due while it waits, promoting it to a recovery point', async () => {
    const { db } = database;
    const { ds } = await addMember(db, OFFICE);
    const scheduler = new Scheduler({ db, timeZone: 'UTC' });
    await scheduler.tick(new Date('2025-06-02T07:40:00Z'));
    const [sync] = mine(await scheduler.tick(new Date('2025-06-02T07:45:00Z')), ds.id);
    expect(sync?.kind).toBe('sync');

    // The agent is offline: the job waits. The 08:00 recovery point makes it a recovery point.
    const at8 = await scheduler.tick(new Date('2025-06-02T08:00:00Z'));
    expect(mine(at8, ds.id)).toEqual([]);
    expect(at8.promoted).toEqual([{ datasourceId: ds.id, jobId: sync!.jobId, kind: 'recovery-point' }]);
    const at815 = await scheduler.tick(new Date('2025-06-02T08:15:00Z'));
    expect(mine(at815, ds.id)).toEqual([]);
    expect(at815.covered).toEqual([{ datasourceId: ds.id, jobId: sync!.jobId, kind: 'sync' }]);
    let rows = await jobsOf(db, ds.id);
    expect(rows.map((j) => [j.state, j.params])).toEqual([
      ['queued', { full: false, origin: 'recovery-point' }],
    ]);

    // A job that already ran once (interrupted, waiting to resume) keeps what it is.
    await db
      .update(jobs)
      .set({ attempts: 1, params: { full: false, origin: 'sync' } })
      .where(eq(jobs.id, sync!.jobId));
    const at12 = await scheduler.tick(new Date('2025-06-02T12:00:00Z'));
    expect(mine(at12, ds.id).map((q) => q.kind)).toEqual(['recovery-point']);

    await finishQueued(db, ds.id);
    expect(mine(await scheduler.tick(new Date('2025-06-02T12:15:00Z')), ds.id).map((q) => q.kind)).toEqual([
      'sync',
    ]);
    rows = await jobsOf(db, ds.id);
    expect(rows).toHaveLength(3);
  });

  it('never makes a job twice when two schedulers tick at the same instants', async () => {
    const { db } = database;
    const agent = await addAgent(db);
    const group = await addGroup(db, { ...OFFICE, syncEvery: '30m' });
    const members = await Promise.all([1, 2, 3].map(() => addDatasourceRow(db, agent.id, group.id)));
    const a = new Scheduler({ db, timeZone: 'UTC' });
    const b = new Scheduler({ db, timeZone: 'UTC' });
    const start = Date.parse('2025-06-03T00:00:00Z');
    const made: string[] = [];
    for (let t = start; t <= start + DAY; t += 5 * MINUTE) {
      const reports = await Promise.all([a.tick(new Date(t)), b.tick(new Date(t))]);
      for (const r of reports)
        for (const q of r.queued) made.push(`${q.datasourceId}@${q.slotAt.toISOString()}`);
      await Promise.all(members.map((m) => finishQueued(db, m.id)));
    }
    expect(new Set(made).size).toBe(made.length);
    expect(made).toHaveLength(3 * 48);
    for (const m of members) expect(await jobsOf(db, m.id)).toHaveLength(48);
  });

  it('places recovery points at local time in a non-UTC zone, across a DST change', async () => {
    const { db } = database;
    const { ds } = await addMember(db, {
      syncEvery: 'rp-only',
      recoveryPoints: { days: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'], times: ['02:30', '08:00'] },
    });
    const scheduler = new Scheduler({ db, timeZone: 'Europe/Berlin' });
    const start = Date.parse('2025-03-29T00:00:00Z');
    await scheduler.tick(new Date(start));
    const made: string[] = [];
    for (let t = start + 5 * MINUTE; t <= Date.parse('2025-04-01T00:00:00Z'); t += 5 * MINUTE) {
      for (const q of mine(await scheduler.tick(new Date(t)), ds.id)) made.push(q.slotAt.toISOString());
      await finishQueued(db, ds.id);
    }
    // Berlin is UTC+1 until 2025-03-30 02:00, then UTC+2; 02:30 does not exist that night and
    // runs when the clocks jump (03:00 CEST = 01:00 UTC).
    expect(made).toEqual([
      '2025-03-29T01:30:00.000Z',
      '2025-03-29T07:00:00.000Z',
      '2025-03-30T01:00:00.000Z',
      '2025-03-30T06:00:00.000Z',
      '2025-03-31T00:30:00.000Z',
      '2025-03-31T06:00:00.000Z',
    ]);
  });

  it('queues a daily consistency check at its start with its window as deadline, not after it', async () => {
    const { db } = database;
    const { ds, group } = await addMember(db, {
      syncEvery: 'rp-only',
      recoveryPoints: { days: ['sun'], times: ['12:00'] },
      consistencyCheck: { when: 'daily', start: '22:00', maxHours: 4 },
    });
    const scheduler = new Scheduler({ db, timeZone: 'UTC' });
    await scheduler.tick(new Date('2025-06-03T21:55:00Z'));
    const [check] = mine(await scheduler.tick(new Date('2025-06-03T22:00:00Z')), ds.id);
    expect(check).toMatchObject({
      type: 'consistency-check',
      kind: 'consistency-check',
      trigger: 'schedule',
    });
    const [row] = await jobsOf(db, ds.id);
    expect(row).toMatchObject({
      type: 'consistency-check',
      trigger: 'schedule',
      groupId: group.id,
      maxRetries: 3,
      params: { full: true, origin: 'consistency-check' },
    });
    expect(row!.deadline?.toISOString()).toBe('2025-06-04T02:00:00.000Z');
    await finishQueued(db, ds.id);

    // Down from 21:00 to 02:30: the window of the 22:00 check closed, none is started late.
    await scheduler.tick(new Date('2025-06-04T21:00:00Z'));
    const late = await scheduler.tick(new Date('2025-06-05T02:30:00Z'));
    expect(mine(late, ds.id)).toEqual([]);
    expect(late.windowMissed.map((w) => w.slotAt.toISOString())).toEqual(['2025-06-04T22:00:00.000Z']);
    expect(await jobsOf(db, ds.id)).toHaveLength(1);
  });

  it('queues a consistency check for an inconsistent replica when needed, once, and spaces out repeats', async () => {
    const { db } = database;
    const { ds } = await addMember(db, {
      syncEvery: 'rp-only',
      recoveryPoints: { days: ['sun'], times: ['12:00'] },
    });
    const scheduler = new Scheduler({ db, timeZone: 'UTC' });
    const t0 = Date.parse('2025-06-03T10:00:00Z');
    expect(mine(await scheduler.tick(new Date(t0)), ds.id)).toEqual([]);
    await db.update(datasources).set({ replicaState: 'inconsistent' }).where(eq(datasources.id, ds.id));

    const first = mine(await scheduler.tick(new Date(t0 + MINUTE)), ds.id);
    expect(first).toMatchObject([{ type: 'consistency-check', kind: 'needed', trigger: 'system' }]);
    expect(mine(await scheduler.tick(new Date(t0 + 2 * MINUTE)), ds.id)).toEqual([]); // one is queued
    await finishQueued(db, ds.id, 'failed');
    expect(mine(await scheduler.tick(new Date(t0 + 10 * MINUTE)), ds.id)).toEqual([]); // backoff
    expect(mine(await scheduler.tick(new Date(t0 + MINUTE + HOUR)), ds.id)).toHaveLength(1);
    await finishQueued(db, ds.id);
    await db.update(datasources).set({ replicaState: 'consistent' }).where(eq(datasources.id, ds.id));
    expect(mine(await scheduler.tick(new Date(t0 + 3 * HOUR)), ds.id)).toEqual([]);
    const rows = await jobsOf(db, ds.id);
    expect(rows.map((j) => [j.type, j.trigger])).toEqual([
      ['consistency-check', 'system'],
      ['consistency-check', 'system'],
    ]);
  });

  it('schedules nothing for revoked agents, and forgets a datasource that left its group', async () => {
    const { db } = database;
    const { ds, agent, group } = await addMember(db, OFFICE);
    const scheduler = new Scheduler({ db, timeZone: 'UTC' });
    await scheduler.tick(new Date('2025-06-03T10:00:00Z'));
    await db.update(datasources).set({ groupId: null }).where(eq(datasources.id, ds.id));
    await scheduler.tick(new Date('2025-06-03T10:10:00Z'));
    // Back in the group a day later: it owes nothing from the time it was out.
    await db.update(datasources).set({ groupId: group.id }).where(eq(datasources.id, ds.id));
    expect(mine(await scheduler.tick(new Date('2025-06-04T10:10:00Z')), ds.id)).toEqual([]);
    expect(mine(await scheduler.tick(new Date('2025-06-04T10:15:00Z')), ds.id)).toHaveLength(1);

    await db.update(agents).set({ revokedAt: new Date() }).where(eq(agents.id, agent.id));
    expect(mine(await scheduler.tick(new Date('2025-06-04T12:00:00Z')), ds.id)).toEqual([]);
    expect(await jobsOf(db, ds.id)).toHaveLength(1);
  });

  it('lists the next run of each member, soonest first', async () => {
    const { db } = database;
    const office = await addMember(db, OFFICE);
    const nightly = await addMember(db, {
      syncEvery: 'rp-only',
      recoveryPoints: { days: ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'], times: ['23:00'] },
      consistencyCheck: { when: 'daily', start: '22:00', maxHours: 2 },
    });
    const runs = await upcomingRuns(db, new Date('2025-06-02T07:50:00Z'), { timeZone: 'UTC' });
    expect(runs.map((r) => [r.datasourceId, r.kind, r.at])).toEqual([
      [office.ds.id, 'recovery-point', '2025-06-02T08:00:00.000Z'],
      [nightly.ds.id, 'consistency-check', '2025-06-02T22:00:00.000Z'],
      [nightly.ds.id, 'recovery-point', '2025-06-02T23:00:00.000Z'],
    ]);
    expect(runs[0]).toMatchObject({
      group: office.group.name,
      agent: office.agent.name,
      path: office.ds.path,
    });
    expect(
      await upcomingRuns(db, new Date('2025-06-02T07:50:00Z'), { timeZone: 'UTC', limit: 1 }),
    ).toHaveLength(1);
  });
});
