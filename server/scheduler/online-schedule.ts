import type { Logger } from 'pino';
import type { Db } from '../db/database.ts';
import { like } from 'drizzle-orm';
import { protectionGroups, scheduleMarks } from '../db/schema.ts';
import { DAYS, type DiskPolicy, type OnlinePolicy } from '../groups/policy.ts';
import { readPolicy } from '../groups/group-rows.ts';
import { queueOnlineBackup } from '../vault/online-backup.ts';
import { lockMark, setMark } from './marks.ts';
import { slotsBetween } from './slots.ts';

/*
 * The online tier's schedule: a group with online protection gets one online-backup job per
 * due slot of its `online.schedule` (daily at up to two times, or weekly on chosen days), as
 * the disk scheduler does for backups: missed slots make one job, a mark per group (locked in
 * the transaction that queues the job) keeps two server processes from queuing it twice.
 */

const markKey = (groupId: string) => `group:${groupId}:online`;

/** The online schedule as recovery-point times, so the disk tier's slot arithmetic (time zone, DST) applies. */
function asSlots(online: OnlinePolicy): DiskPolicy | null {
  const s = online.schedule;
  if (!online.enabled || !s) return null;
  const { days, times } = 'daily' in s ? { days: [...DAYS], times: s.daily } : s.weekly;
  return {
    retentionDays: 1,
    syncEvery: 'rp-only',
    recoveryPoints: { days, times },
    expressFull: null,
    consistencyCheck: { when: 'needed' },
  };
}

/** Queues the online backups due at `now`; returns the ids of the jobs queued. */
export async function tickOnlineSchedules(
  db: Db,
  now: Date,
  opts: { timeZone: string; log?: Logger },
): Promise<string[]> {
  const queued: string[] = [];
  const marks = new Map(
    (await db.select().from(scheduleMarks).where(like(scheduleMarks.key, 'group:%'))).map((m) => [
      m.key,
      m.lastSlotAt,
    ]),
  );
  for (const group of await db.select().from(protectionGroups)) {
    let schedule: DiskPolicy | null;
    try {
      schedule = asSlots(readPolicy(group).online);
    } catch {
      continue; // an invalid stored policy is reported by the disk scheduler
    }
    if (!schedule) continue;
    // Most ticks have nothing due: decide that from an unlocked read, and write nothing.
    const seen = marks.get(markKey(group.id));
    if (
      seen &&
      slotsBetween(schedule, seen, now, { timeZone: opts.timeZone, kinds: ['recovery-point'] }).length === 0
    )
      continue;
    const jobId = await db.transaction(async (tx) => {
      const last = await lockMark(tx, markKey(group.id), now);
      if (!last) return undefined; // first seen: nothing from before is owed
      const due = slotsBetween(schedule, last, now, { timeZone: opts.timeZone, kinds: ['recovery-point'] });
      const latest = due.at(-1);
      if (!latest) return undefined;
      await setMark(tx, markKey(group.id), latest.at);
      return (await queueOnlineBackup(tx, group.id, 'schedule')).id;
    });
    if (jobId) {
      opts.log?.info({ group: group.name, jobId }, 'online backup queued by schedule');
      queued.push(jobId);
    }
  }
  return queued;
}
