import type { Db } from '../db/database.ts';
import { loadMembers } from './members.ts';
import { BACKUP_KINDS, localTimeZone, nextSlot, type SlotKind } from './slots.ts';

/** One piece of scheduled work to come, for `holdfast jobs list` and the console. */
export interface UpcomingRun {
  group: string;
  groupId: string;
  agent: string;
  datasourceId: string;
  path: string;
  /** What the run will be: a sync, a recovery point, an express full, or a consistency check. */
  kind: SlotKind;
  at: string;
}

/**
 * The next backup slot of each member datasource (and its next daily consistency check, if it
 * has one), soonest first. Slots already past are not listed: the next tick runs those.
 */
export async function upcomingRuns(
  db: Db,
  now: Date,
  opts: { limit?: number; timeZone?: string } = {},
): Promise<UpcomingRun[]> {
  const timeZone = opts.timeZone ?? localTimeZone();
  const { members } = await loadMembers(db);
  const runs: UpcomingRun[] = [];
  for (const m of members) {
    const base = {
      group: m.groupName,
      groupId: m.groupId,
      agent: m.agentName,
      datasourceId: m.datasourceId,
      path: m.path,
    };
    // Slots at one instant come most important first: the kind of the job that will be made.
    const backup = nextSlot(m.disk, now, { timeZone, kinds: BACKUP_KINDS });
    if (backup) runs.push({ ...base, kind: backup.kind, at: backup.at.toISOString() });
    if (m.disk.consistencyCheck.when === 'daily') {
      const check = nextSlot(m.disk, now, { timeZone, kinds: ['consistency-check'] });
      if (check) runs.push({ ...base, kind: 'consistency-check', at: check.at.toISOString() });
    }
  }
  runs.sort((a, b) => a.at.localeCompare(b.at) || a.group.localeCompare(b.group));
  return runs.slice(0, opts.limit ?? 100);
}
