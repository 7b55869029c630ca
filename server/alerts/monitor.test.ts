import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { eq } from 'drizzle-orm';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openTestDatabase } from '../chunk-store/test-database.test-helpers.ts';
import type { Db } from '../db/database.ts';
import { agents, alerts, datasources, recoveryPoints } from '../db/schema.ts';
import { addAgent, addDatasourceRow, addMember, HOUR, MINUTE } from '../scheduler/fixtures.test-helpers.ts';
import { backupFailed, backupSucceeded, replicaConsistent, replicaInconsistent } from './alert-events.ts';
import { AlertMonitor } from './monitor.ts';

/*
 * The monitor against a real database and a simulated clock: check(now) with chosen times,
 * recovery points and lastSeenAt written with those times.
 */
let dir: string;
let database: Awaited<ReturnType<typeof openTestDatabase>>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-monitor-'));
  database = await openTestDatabase(dir);
});
afterAll(async () => {
  await database?.drop();
  await rm(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await database.db.update(datasources).set({ groupId: null });
});

/** A store threshold no file system reaches: the store check stays quiet in other tests. */
const QUIET_STORE = { storeWarningPercent: 101, storeCriticalPercent: 101 };

async function alertsOf(db: Db, subject: string) {
  return db.select().from(alerts).where(eq(alerts.subject, subject)).orderBy(alerts.raisedAt);
}
async function addPoint(db: Db, datasourceId: string, createdAt: Date, status: 'ok' | 'corrupt' = 'ok') {
  await db.insert(recoveryPoints).values({
    id: randomUUID(),
    datasourceId,
    jobId: randomUUID(),
    origin: 'sync',
    status,
    createdAt,
    kind: 'files',
    consistency: 'file-consistent',
    bytes: 1,
    files: 1,
    blocks: 1,
  });
}

describe('alert monitor', () => {
  it('raises rpo-missed once the newest good point is older than the schedule allows, and resolves it', async () => {
    const { db } = database;
    const { ds } = await addMember(db, {
      syncEvery: '15m',
      recoveryPoints: { days: ['mon'], times: ['08:00'] },
    });
    const subject = `datasource:${ds.id}`;
    const monitor = new AlertMonitor({ db, storeDir: dir, timeZone: 'UTC', thresholds: QUIET_STORE });
    const t0 = Date.parse('2025-06-03T10:00:00Z');
    await addPoint(db, ds.id, new Date(t0));

    // Syncs every 15 minutes plus 1 h of grace: 75 minutes.
    await monitor.check(new Date(t0 + 70 * MINUTE));
    expect(await alertsOf(db, subject)).toEqual([]);
    // A damaged point does not count as protection.
    await addPoint(db, ds.id, new Date(t0 + 60 * MINUTE), 'corrupt');
    const late = await monitor.check(new Date(t0 + 80 * MINUTE));
    expect(late.holding).toContainEqual({ kind: 'rpo-missed', subject, severity: 'warning' });
    await monitor.check(new Date(t0 + 85 * MINUTE));
    let rows = await alertsOf(db, subject);
    expect(rows.map((a) => [a.kind, a.severity, a.state])).toEqual([['rpo-missed', 'warning', 'active']]);
    expect(rows[0]!.message).toContain('1.3 h');

    await addPoint(db, ds.id, new Date(t0 + 86 * MINUTE));
    const back = await monitor.check(new Date(t0 + 87 * MINUTE));
    expect(back.resolved).toEqual([{ kind: 'rpo-missed', subject }]);
    rows = await alertsOf(db, subject);
    expect(rows.map((a) => a.state)).toEqual(['resolved']);
  });

  it('allows a recovery-point-only schedule its week-end gap', async () => {
    const { db } = database;
    const { ds } = await addMember(db, {
      syncEvery: 'rp-only',
      recoveryPoints: { days: ['mon', 'tue', 'wed', 'thu', 'fri'], times: ['08:00', '12:00', '20:00'] },
    });
    const subject = `datasource:${ds.id}`;
    const monitor = new AlertMonitor({ db, storeDir: dir, timeZone: 'UTC', thresholds: QUIET_STORE });
    await addPoint(db, ds.id, new Date('2025-06-06T20:05:00Z')); // Friday evening
    // Monday 08:00 is 60 h later; with the grace, 61 h.
    await monitor.check(new Date('2025-06-09T08:30:00Z'));
    expect(await alertsOf(db, subject)).toEqual([]);
    await monitor.check(new Date('2025-06-09T09:30:00Z'));
    expect((await alertsOf(db, subject)).map((a) => a.state)).toEqual(['active']);
    // Leaving the group ends the condition too.
    await db.update(datasources).set({ groupId: null }).where(eq(datasources.id, ds.id));
    await monitor.check(new Date('2025-06-09T09:35:00Z'));
    expect((await alertsOf(db, subject)).map((a) => a.state)).toEqual(['resolved']);
  });

  it('raises agent-unreachable for a protecting agent not seen for too long, and resolves it', async () => {
    const { db } = database;
    const { agent, ds } = await addMember(db, {
      syncEvery: '1h',
      recoveryPoints: { days: ['mon'], times: ['08:00'] },
    });
    const idle = await addAgent(db); // no group member: nothing to back up, no alert
    const subject = `agent:${agent.id}`;
    const monitor = new AlertMonitor({
      db,
      storeDir: dir,
      timeZone: 'UTC',
      thresholds: { ...QUIET_STORE, agentUnreachableMs: 30 * MINUTE },
    });
    const now = Date.parse('2025-06-03T10:00:00Z');
    await addPoint(db, ds.id, new Date(now));
    await db
      .update(agents)
      .set({ lastSeenAt: new Date(now - 20 * MINUTE) })
      .where(eq(agents.id, agent.id));
    await db
      .update(agents)
      .set({ lastSeenAt: new Date(now - 5 * HOUR) })
      .where(eq(agents.id, idle.id));
    await monitor.check(new Date(now));
    expect(await alertsOf(db, subject)).toEqual([]);

    await monitor.check(new Date(now + 15 * MINUTE));
    await monitor.check(new Date(now + 20 * MINUTE));
    const rows = await alertsOf(db, subject);
    expect(rows.map((a) => [a.kind, a.severity, a.state])).toEqual([
      ['agent-unreachable', 'warning', 'active'],
    ]);
    expect(rows[0]!.message).toContain(agent.name);
    expect(await alertsOf(db, `agent:${idle.id}`)).toEqual([]);

    await db
      .update(agents)
      .set({ lastSeenAt: new Date(now + 21 * MINUTE) })
      .where(eq(agents.id, agent.id));
    const back = await monitor.check(new Date(now + 22 * MINUTE));
    expect(back.resolved).toContainEqual({ kind: 'agent-unreachable', subject });
    expect((await alertsOf(db, subject)).map((a) => a.state)).toEqual(['resolved']);

    // Seen long ago but connected right now (the refresh is a minute away): reachable.
    const online = new AlertMonitor({
      db,
      storeDir: dir,
      thresholds: { ...QUIET_STORE, agentUnreachableMs: 30 * MINUTE },
      isOnline: (id) => id === agent.id,
    });
    await online.check(new Date(now + 5 * HOUR));
    expect((await alertsOf(db, subject)).map((a) => a.state)).toEqual(['resolved']);
  });

  it('raises store-full as warning or critical by the thresholds, one alert, and resolves it', async () => {
    const { db } = database;
    const now = new Date('2025-06-03T10:00:00Z');
    // Any real file system is above 0 % and below 101 %: the thresholds decide.
    const at = (storeWarningPercent: number, storeCriticalPercent: number) =>
      new AlertMonitor({
        db,
        storeDir: dir,
        thresholds: { storeWarningPercent, storeCriticalPercent },
      }).check(now);
    await at(0, 101);
    expect((await alertsOf(db, 'store')).map((a) => [a.severity, a.state])).toEqual([['warning', 'active']]);
    await at(0, 0);
    const rows = await alertsOf(db, 'store');
    expect(rows.map((a) => [a.severity, a.state])).toEqual([['critical', 'active']]);
    expect(rows[0]!.message).toMatch(/% full/);
    await at(101, 101);
    expect((await alertsOf(db, 'store')).map((a) => a.state)).toEqual(['resolved']);
    // Raised again later: a new alert, the old one stays in the history.
    await at(0, 101);
    expect((await alertsOf(db, 'store')).map((a) => a.state)).toEqual(['resolved', 'active']);
    await at(101, 101);
  });

  it('keeps checking the other conditions when the store cannot be read', async () => {
    const { db } = database;
    const { ds } = await addMember(db, {
      syncEvery: '15m',
      recoveryPoints: { days: ['mon'], times: ['08:00'] },
    });
    const monitor = new AlertMonitor({ db, storeDir: path.join(dir, 'missing'), timeZone: 'UTC' });
    const report = await monitor.check(new Date(ds.createdAt.getTime() + 3 * HOUR));
    expect(report.holding).toContainEqual({
      kind: 'rpo-missed',
      subject: `datasource:${ds.id}`,
      severity: 'warning',
    });
  });
});

describe('alert events', () => {
  it('raise one alert per datasource and resolve it when the owner says so', async () => {
    const { db } = database;
    const agent = await addAgent(db);
    const ds = await addDatasourceRow(db, agent.id, null);
    const subject = `datasource:${ds.id}`;
    await backupFailed(db, ds, { id: 'job-1' }, 'agent said no');
    await backupFailed(db, ds, { id: 'job-2' }, 'disk full');
    await replicaInconsistent(db, ds, 'verify found 3 damaged blocks');
    let rows = await alertsOf(db, subject);
    expect(rows.map((a) => [a.kind, a.severity, a.state])).toEqual([
      ['backup-failed', 'critical', 'active'],
      ['replica-inconsistent', 'warning', 'active'],
    ]);
    expect(rows[0]!.message).toBe(`backup of ${ds.path} failed: disk full (job job-2)`);
    await backupSucceeded(db, ds.id);
    await replicaConsistent(db, ds.id);
    rows = await alertsOf(db, subject);
    expect(rows.map((a) => a.state)).toEqual(['resolved', 'resolved']);
  });
});
