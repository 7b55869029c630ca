import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openTestDatabase } from '../chunk-store/test-database.test-helpers.ts';
import { jobs, protectionGroups } from '../db/schema.ts';
import { parsePolicy } from '../groups/policy.ts';
import { DAY, HOUR, MINUTE } from './fixtures.test-helpers.ts';
import { tickOnlineSchedules } from './online-schedule.ts';

let dir: string;
let database: Awaited<ReturnType<typeof openTestDatabase>>;
const db = () => database.db;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-online-schedule-'));
  database = await openTestDatabase(dir);
});
afterAll(async () => {
  await database?.drop();
  await rm(dir, { recursive: true, force: true });
});

const disk = { retentionDays: 7, syncEvery: 'rp-only', recoveryPoints: { days: ['mon'], times: ['08:00'] } };

async function addGroup(online: Record<string, unknown>) {
  const policy = parsePolicy({ disk, online });
  const [row] = await db()
    .insert(protectionGroups)
    .values({
      id: randomUUID(),
      name: `g-${randomUUID().slice(0, 8)}`,
      policy: policy as Record<string, unknown>,
    })
    .returning();
  return row!;
}

const onlineJobsOf = (groupId: string) => db().select().from(jobs).where(eq(jobs.groupId, groupId));
const finish = (groupId: string) =>
  db().update(jobs).set({ state: 'succeeded' }).where(eq(jobs.groupId, groupId));

/** Ticks every 5 minutes from `from` for `ms`, simulating each queued job running at once. */
async function run(groupId: string, from: number, ms: number): Promise<Date[]> {
  const at: Date[] = [];
  for (let t = from; t <= from + ms; t += 5 * MINUTE) {
    const queued = await tickOnlineSchedules(db(), new Date(t), { timeZone: 'UTC' });
    const mine = (await onlineJobsOf(groupId)).filter((j) => queued.includes(j.id));
    for (const _ of mine) at.push(new Date(t));
    await finish(groupId);
  }
  return at;
}

describe('online schedules', () => {
  // Monday 2026-03-02 00:00 UTC.
  const monday = Date.UTC(2026, 2, 2);

  it('queues one online backup per daily slot over a week, at the slot times', async () => {
    const g = await addGroup({
      enabled: true,
      schedule: { daily: ['21:00', '03:30'] },
      retention: { daily: 30 },
    });
    const at = await run(g.id, monday, 7 * DAY - MINUTE);
    expect(at).toHaveLength(14);
    expect(at.map((d) => d.toISOString().slice(11, 16)).sort()).toEqual([
      ...Array(7).fill('03:30'),
      ...Array(7).fill('21:00'),
    ]);
    const rows = await onlineJobsOf(g.id);
    expect(
      rows.every((j) => j.type === 'online-backup' && j.trigger === 'schedule' && j.agentId === null),
    ).toBe(true);
  });

  it('weekly on chosen days; missed slots make one job', async () => {
    const g = await addGroup({
      enabled: true,
      schedule: { weekly: { days: ['sat', 'sun'], times: ['21:00'] } },
      retention: { weekly: 4 },
    });
    const start = monday + 14 * DAY;
    expect(await run(g.id, start, 7 * DAY - MINUTE)).toHaveLength(2);
    // Down for two weeks (four slots missed): one job when it comes back.
    const back = start + 21 * DAY + HOUR;
    const queued = await tickOnlineSchedules(db(), new Date(back), { timeZone: 'UTC' });
    expect((await onlineJobsOf(g.id)).filter((j) => queued.includes(j.id))).toHaveLength(1);
    expect(await tickOnlineSchedules(db(), new Date(back + MINUTE), { timeZone: 'UTC' })).toEqual([]);
  });

  it('nothing for a group without online protection', async () => {
    const g = await addGroup({ enabled: false });
    expect(await run(g.id, monday + 60 * DAY, 2 * DAY)).toEqual([]);
  });

  it('two processes ticking together queue each slot once', async () => {
    const g = await addGroup({ enabled: true, schedule: { daily: ['12:00'] }, retention: { daily: 7 } });
    const base = monday + 90 * DAY;
    await tickOnlineSchedules(db(), new Date(base), { timeZone: 'UTC' });
    for (let d = 0; d < 3; d++) {
      const t = new Date(base + d * DAY + 12 * HOUR + MINUTE);
      await Promise.all([
        tickOnlineSchedules(db(), t, { timeZone: 'UTC' }),
        tickOnlineSchedules(db(), t, { timeZone: 'UTC' }),
      ]);
      await finish(g.id);
    }
    expect(await onlineJobsOf(g.id)).toHaveLength(3);
  });
});
