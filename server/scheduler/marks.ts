import { and, eq, like } from 'drizzle-orm';
import type { Db, Tx } from '../db/database.ts';
import { scheduleMarks } from '../db/schema.ts';

/*
 * Schedule marks: per datasource and schedule, the last slot already turned into a job.
 * Keys: `ds:<id>:backup` (sync, recovery point and express full share one: they make one job),
 * `ds:<id>:consistency` (daily consistency check), `ds:<id>:consistency-needed` (when a check
 * for an inconsistent replica was last queued, to space out repeats of a failing one).
 */

export type MarkName = 'backup' | 'consistency' | 'consistency-needed';

export const markKey = (datasourceId: string, name: MarkName) => `ds:${datasourceId}:${name}`;

/** `ds:<id>:backup` -> the datasource id. */
export function datasourceOfMark(key: string): string | null {
  const m = /^ds:(.+):(backup|consistency|consistency-needed)$/.exec(key);
  return m ? m[1]! : null;
}

/** All datasource marks, read without locking: a cheap "is anything due?" before any transaction. */
export async function readMarks(db: Db): Promise<Map<string, Date>> {
  const rows = await db.select().from(scheduleMarks).where(like(scheduleMarks.key, 'ds:%'));
  return new Map(rows.map((r) => [r.key, r.lastSlotAt]));
}

/**
 * Takes the mark row for the rest of the transaction. A missing mark is created at `now` and
 * null returned: a schedule seen for the first time owes nothing from before.
 *
 * Insert-on-conflict then SELECT ... FOR UPDATE: a second process doing the same waits on the
 * first one's uncommitted insert or row lock, then reads the mark as the first one left it.
 */
export async function lockMark(tx: Tx, key: string, now: Date): Promise<Date | null> {
  const inserted = await tx
    .insert(scheduleMarks)
    .values({ key, lastSlotAt: now })
    .onConflictDoNothing()
    .returning({ key: scheduleMarks.key });
  if (inserted.length > 0) return null;
  const [row] = await tx.select().from(scheduleMarks).where(eq(scheduleMarks.key, key)).for('update');
  // Deleted meanwhile (its datasource left the group): nothing is owed.
  return row?.lastSlotAt ?? null;
}

export async function setMark(tx: Tx, key: string, at: Date): Promise<void> {
  await tx.update(scheduleMarks).set({ lastSlotAt: at }).where(eq(scheduleMarks.key, key));
}

/** Forgets a mark, unless it moved since it was read (then it is in use again). */
export async function dropMark(db: Db, key: string, readAs: Date): Promise<void> {
  await db.delete(scheduleMarks).where(and(eq(scheduleMarks.key, key), eq(scheduleMarks.lastSlotAt, readAs)));
}
