import { randomUUID } from 'node:crypto';
import { and, desc, eq, inArray, isNotNull, notInArray, sql } from 'drizzle-orm';
import type { Db, Tx } from '../db/database.ts';
import { jobs } from '../db/schema.ts';
import { notFound } from '../errors.ts';

export type JobRow = typeof jobs.$inferSelect;
export type JobType = JobRow['type'];

export interface BackupParams {
  /** Re-read every block, ignoring the agent's checksum cache (express full, consistency check). */
  full: boolean;
  /** What the recovery point is recorded as (recovery_points.origin); manual by default. */
  origin?: 'manual' | 'sync' | 'recovery-point' | 'express-full' | 'consistency-check';
}
export interface RestoreParams {
  rpId: string;
  target: string;
  paths: string[];
}

export interface NewJob {
  type: JobType;
  /** Null for jobs of the server alone (verify, gc). */
  agentId: string | null;
  datasourceId: string | null;
  groupId?: string | null;
  trigger?: JobRow['trigger'];
  params: object;
  /** Failed runs are retried this many times, with backoff (scheduled work); 0 for manual jobs. */
  maxRetries?: number;
  /** Not before (default: now). */
  runAfter?: Date;
  /** A job still queued at this time fails (e.g. a consistency check's daily window closed). */
  deadline?: Date | null;
}

export async function createJob(db: Db | Tx, input: NewJob): Promise<JobRow> {
  const [row] = await db
    .insert(jobs)
    .values({
      id: randomUUID(),
      type: input.type,
      agentId: input.agentId,
      datasourceId: input.datasourceId,
      groupId: input.groupId ?? null,
      trigger: input.trigger ?? 'manual',
      params: input.params,
      maxRetries: input.maxRetries ?? 0,
      ...(input.runAfter ? { runAfter: input.runAfter } : {}),
      deadline: input.deadline ?? null,
    })
    .returning();
  return row!;
}

export async function getJob(db: Db, id: string): Promise<JobRow> {
  const [row] = await db.select().from(jobs).where(eq(jobs.id, id));
  if (!row) throw notFound(`job ${id}`);
  return row;
}

export async function listJobs(db: Db, limit = 200): Promise<JobRow[]> {
  return db.select().from(jobs).orderBy(desc(jobs.createdAt)).limit(limit);
}

export type JobCounters = Partial<
  Pick<JobRow, 'bytesScanned' | 'bytesSent' | 'bytesStored' | 'blocksSent' | 'files' | 'warnings'>
>;

/** A backup whose link dropped waits in the queue for its agent, keeping what it moved so far. */
export async function requeueInterrupted(db: Db, id: string, counters: JobCounters): Promise<void> {
  await db
    .update(jobs)
    .set({
      ...counters,
      state: 'queued',
      leaseUntil: null,
      interruptedAt: sql`coalesce(${jobs.interruptedAt}, now())`,
    })
    .where(and(eq(jobs.id, id), eq(jobs.state, 'running')));
}

/** Interrupted backups whose agent did not come back within the resume window fail (ids returned). */
export async function expireInterrupted(db: Db, windowMs: number): Promise<string[]> {
  const rows = await db
    .update(jobs)
    .set({
      state: 'failed',
      finishedAt: sql`now()`,
      error: `the agent did not come back within ${Math.round(windowMs / 1000)} s to resume; blocks already stored are reused by the next backup`,
    })
    .where(
      and(
        eq(jobs.state, 'queued'),
        sql`${jobs.interruptedAt} < now() - make_interval(secs => ${windowMs / 1000})`,
      ),
    )
    .returning({ id: jobs.id });
  return rows.map((r) => r.id);
}

/**
 * Cancels the queued jobs a group's schedule made, of the whole group (it is deleted) or of
 * its datasources not in `keep` (they left it): they would run and make points no policy prunes.
 */
export async function cancelScheduledJobs(
  tx: Db | Tx,
  groupId: string,
  reason: string,
  keep?: string[],
): Promise<number> {
  const rows = await tx
    .update(jobs)
    .set({ state: 'cancelled', finishedAt: sql`now()`, error: `cancelled: ${reason}` })
    .where(
      and(
        eq(jobs.groupId, groupId),
        eq(jobs.state, 'queued'),
        eq(jobs.trigger, 'schedule'),
        keep
          ? and(isNotNull(jobs.datasourceId), keep.length ? notInArray(jobs.datasourceId, keep) : undefined)
          : undefined,
      ),
    )
    .returning({ id: jobs.id });
  return rows.length;
}

/**
 * Removes finished jobs older than `keepMs` (their recovery points stay; a point's `jobId` then
 * names a job no longer listed). Returns how many were removed.
 */
export async function pruneJobHistory(db: Db, keepMs: number): Promise<number> {
  const rows = await db
    .delete(jobs)
    .where(
      and(
        inArray(jobs.state, ['succeeded', 'failed', 'cancelled']),
        sql`${jobs.finishedAt} < now() - make_interval(secs => ${keepMs / 1000})`,
      ),
    )
    .returning({ id: jobs.id });
  return rows.length;
}

/** Rate and time left of a running job, from its live counters. */
function progressOf(job: JobRow) {
  if (job.state !== 'running' || !job.startedAt) return { rate: null, etaSeconds: null };
  const seconds = Math.max(0.001, (Date.now() - job.startedAt.getTime()) / 1000);
  const rate = job.bytesDone / seconds;
  const etaSeconds =
    job.bytesTotal && rate > 0 ? Math.max(0, Math.round((job.bytesTotal - job.bytesDone) / rate)) : null;
  return { rate: Math.round(rate), etaSeconds };
}

export function jobView(job: JobRow, agentName?: string) {
  return {
    ...progressOf(job),
    id: job.id,
    type: job.type,
    state: job.state,
    trigger: job.trigger,
    groupId: job.groupId,
    runAfter: job.runAfter.toISOString(),
    deadline: job.deadline?.toISOString() ?? null,
    retries: job.retries,
    maxRetries: job.maxRetries,
    result: job.result,
    agent: agentName,
    agentId: job.agentId,
    datasourceId: job.datasourceId,
    rpId: job.rpId,
    params: job.params,
    createdAt: job.createdAt.toISOString(),
    startedAt: job.startedAt?.toISOString() ?? null,
    finishedAt: job.finishedAt?.toISOString() ?? null,
    bytesScanned: job.bytesScanned,
    bytesSent: job.bytesSent,
    bytesStored: job.bytesStored,
    blocksSent: job.blocksSent,
    files: job.files,
    bytesDone: job.bytesDone,
    bytesTotal: job.bytesTotal,
    attempts: job.attempts,
    interruptedAt: job.interruptedAt?.toISOString() ?? null,
    warnings: job.warnings,
    error: job.error,
  };
}
export type JobView = ReturnType<typeof jobView>;
