import { and, eq, inArray, isNotNull, isNull, lt, type SQL, sql } from 'drizzle-orm';
import type { Db } from '../db/database.ts';
import { agents, jobs } from '../db/schema.ts';
import type { JobCounters, JobRow } from './job-repo.ts';

/*
 * The durable job queue: job rows in PostgreSQL, taken by server processes with row leases.
 *
 * A process claims one queued job at a time (`FOR UPDATE SKIP LOCKED`: two processes never
 * pick the same row) and holds it for `leaseMs`, renewing the lease while the job runs. A
 * process that dies stops renewing; once its leases expire, any process takes the jobs over:
 * backups go back to the queue to resume (blocks already acknowledged are not sent again),
 * other jobs count a failed attempt. Limits are checked in the claiming transaction: one
 * backup at a time per datasource (also a partial unique index), at most `maxPerAgent`
 * running jobs per agent (serialised per agent with an advisory lock).
 */

/** Runs of one backup (resumes included): a guard against data that crashes the server or agent every time. */
export const MAX_RESUMES = 10;

/** Jobs that hold their datasource: never two of them at once. */
export const DATASOURCE_EXCLUSIVE: readonly JobRow['type'][] = ['backup', 'consistency-check'];

export interface ClaimOptions {
  /** This server process (lease owner). */
  owner: string;
  leaseMs: number;
  /** Agents connected to this process: only their jobs (and agentless ones) can run here. */
  agentIds: string[];
  maxPerAgent: number;
}

interface Candidate extends Record<string, unknown> {
  id: string;
  agent_id: string | null;
  type: JobRow['type'];
}

/** Takes the next runnable job for this process, or undefined when there is none. */
export async function claimJob(db: Db, opts: ClaimOptions): Promise<JobRow | undefined> {
  const agentFilter =
    opts.agentIds.length > 0
      ? sql`(j.agent_id is null or j.agent_id in (${sql.join(
          opts.agentIds.map((id) => sql`${id}`),
          sql`, `,
        )}))`
      : sql`j.agent_id is null`;
  try {
    return await db.transaction(async (tx) => {
      const found = (await tx.execute(sql`
        select j.id, j.agent_id, j.type from jobs j
        where j.state = 'queued' and j.run_after <= now() and ${agentFilter}
          and not (j.type = 'gc' and exists (select 1 from jobs r where r.state = 'running' and r.type = 'gc'))
          and not (j.type in ('backup', 'consistency-check') and exists (
            select 1 from jobs r where r.state = 'running' and r.datasource_id = j.datasource_id
              and r.type in ('backup', 'consistency-check')))
          and (j.agent_id is null or (select count(*) from jobs r
            where r.state = 'running' and r.agent_id = j.agent_id) < ${opts.maxPerAgent})
        order by (j.interrupted_at is null), j.created_at
        limit 1
        for update of j skip locked`)) as unknown as { rows: Candidate[] };
      const candidate = found.rows[0];
      if (!candidate) return undefined;
      if (candidate.agent_id) {
        // Serialise claims for one agent across processes, then count what it already runs.
        await tx.execute(
          sql`select pg_advisory_xact_lock(hashtext(${`holdfast-agent:${candidate.agent_id}`}))`,
        );
        const [busy] = await tx
          .select({ n: sql<number>`count(*)::int` })
          .from(jobs)
          .where(and(eq(jobs.state, 'running'), eq(jobs.agentId, candidate.agent_id)));
        if ((busy?.n ?? 0) >= opts.maxPerAgent) return undefined;
      }
      if (candidate.type === 'gc') {
        // One garbage collection at a time, whichever process: they would sweep each other's packs.
        await tx.execute(sql`select pg_advisory_xact_lock(hashtext('holdfast-gc'))`);
        const [gc] = await tx
          .select({ n: sql<number>`count(*)::int` })
          .from(jobs)
          .where(and(eq(jobs.state, 'running'), eq(jobs.type, 'gc')));
        if ((gc?.n ?? 0) > 0) return undefined;
      }
      const [row] = await tx
        .update(jobs)
        .set({
          state: 'running',
          leaseOwner: opts.owner,
          leaseUntil: sql`now() + make_interval(secs => ${opts.leaseMs / 1000})`,
          startedAt: sql`coalesce(${jobs.startedAt}, now())`,
          attempts: sql`${jobs.attempts} + 1`,
          // Running again: the resume window of the last outage is over.
          interruptedAt: null,
        })
        .where(and(eq(jobs.id, candidate.id), eq(jobs.state, 'queued')))
        .returning();
      return row;
    });
  } catch (err) {
    // Two processes raced for two backups of one datasource: the unique index refused the
    // second; it stays queued and is claimed later.
    // (drizzle wraps driver errors in a DrizzleQueryError: the code is on its cause.)
    const e = err as { code?: string; cause?: { code?: string } };
    if ((e.code ?? e.cause?.code) === '23505') return undefined;
    throw err;
  }
}

/** Extends the leases of jobs this process runs; returns the ids it still holds. */
export async function renewLeases(
  db: Db,
  owner: string,
  ids: string[],
  leaseMs: number,
): Promise<Set<string>> {
  if (ids.length === 0) return new Set();
  const rows = await db
    .update(jobs)
    .set({ leaseUntil: sql`now() + make_interval(secs => ${leaseMs / 1000})` })
    .where(and(inArray(jobs.id, ids), eq(jobs.leaseOwner, owner), eq(jobs.state, 'running')))
    .returning({ id: jobs.id });
  return new Set(rows.map((r) => r.id));
}

/**
 * Takes over running jobs whose lease expired (their process died), and at start-up those of
 * this very process (`owner`, same data folder: it was restarted). Backups and consistency
 * checks go back to the queue as interrupted, to resume; other jobs count a failed attempt.
 */
export async function reapExpiredLeases(
  db: Db,
  opts: { owner?: string; retryBackoffMs: number },
): Promise<{ resumed: number; retried: number; failed: number }> {
  const expired = opts.owner
    ? sql`(${jobs.leaseUntil} < now() or ${jobs.leaseOwner} = ${opts.owner} or ${jobs.leaseOwner} is null)`
    : sql`(${jobs.leaseUntil} < now() or ${jobs.leaseOwner} is null)`;
  const resumed = await db
    .update(jobs)
    .set({ state: 'queued', leaseUntil: null, interruptedAt: sql`coalesce(${jobs.interruptedAt}, now())` })
    .where(
      and(
        eq(jobs.state, 'running'),
        inArray(jobs.type, [...DATASOURCE_EXCLUSIVE]),
        lt(jobs.attempts, MAX_RESUMES),
        expired,
      ),
    )
    .returning({ id: jobs.id });
  const others = await db
    .select()
    .from(jobs)
    .where(and(eq(jobs.state, 'running'), expired));
  let retried = 0;
  let failed = 0;
  for (const job of others) {
    const r = await failOrRetry(db, job, 'interrupted: the server process running the job stopped', {
      retryBackoffMs: opts.retryBackoffMs,
      onlyIfRunning: true,
      // Still expired when the update runs: an owner that renewed meanwhile keeps its job.
      guard: expired,
    });
    if (r === 'retried') retried += 1;
    else if (r === 'failed') failed += 1;
  }
  return { resumed: resumed.length, retried, failed };
}

/** Backoff before retry n (0-based): base, 4x base, 16x base..., at most an hour. */
export function retryDelayMs(retry: number, baseMs: number): number {
  return Math.min(3_600_000, baseMs * 4 ** retry);
}

/**
 * A run of the job failed: queue it again after a backoff while it has retries left,
 * otherwise fail it for good. `onlyIfRunning`: do nothing if the job is no longer running.
 */
export async function failOrRetry(
  db: Db,
  job: JobRow,
  error: string,
  opts: { retryBackoffMs: number; counters?: JobCounters; onlyIfRunning?: boolean; guard?: SQL },
): Promise<'retried' | 'failed' | 'gone'> {
  const states = opts.onlyIfRunning ? (['running'] as const) : (['queued', 'running'] as const);
  if (job.retries < job.maxRetries) {
    const delay = retryDelayMs(job.retries, opts.retryBackoffMs);
    const rows = await db
      .update(jobs)
      .set({
        ...opts.counters,
        state: 'queued',
        retries: job.retries + 1,
        leaseUntil: null,
        runAfter: sql`now() + make_interval(secs => ${delay / 1000})`,
        error: `attempt ${job.retries + 1} of ${job.maxRetries + 1} failed (retrying in ${Math.round(delay / 1000)} s): ${error}`,
      })
      .where(and(eq(jobs.id, job.id), inArray(jobs.state, [...states]), opts.guard))
      .returning({ id: jobs.id });
    return rows.length ? 'retried' : 'gone';
  }
  const rows = await db
    .update(jobs)
    .set({ ...opts.counters, state: 'failed', error, leaseUntil: null, finishedAt: sql`now()` })
    .where(and(eq(jobs.id, job.id), inArray(jobs.state, [...states]), opts.guard))
    .returning({ id: jobs.id });
  return rows.length ? 'failed' : 'gone';
}

/** A job of the server alone finished: its report goes into `result`. */
export async function markSucceeded(db: Db, id: string, owner: string, result: unknown): Promise<boolean> {
  const rows = await db
    .update(jobs)
    .set({ state: 'succeeded', result, error: null, leaseUntil: null, finishedAt: sql`now()` })
    .where(and(eq(jobs.id, id), eq(jobs.state, 'running'), eq(jobs.leaseOwner, owner)))
    .returning({ id: jobs.id });
  return rows.length === 1;
}

/**
 * Queued jobs that can no longer start (returns the ids of those failed now): their deadline passed, or their agent has been
 * offline for longer than `offlineWaitMs` (jobs interrupted mid-run have their own resume
 * window and are left alone here).
 */
export async function failStranded(db: Db, offlineWaitMs: number): Promise<string[]> {
  const late = await db
    .update(jobs)
    .set({
      state: 'failed',
      finishedAt: sql`now()`,
      error: sql`'did not run to completion before its deadline ' || to_char(${jobs.deadline} at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')`,
    })
    .where(and(eq(jobs.state, 'queued'), isNotNull(jobs.deadline), lt(jobs.deadline, sql`now()`)))
    .returning({ id: jobs.id });
  const waitSecs = offlineWaitMs / 1000;
  const stale = await db
    .select({ id: jobs.id, agent: agents.name, lastSeenAt: agents.lastSeenAt })
    .from(jobs)
    .innerJoin(agents, eq(agents.id, jobs.agentId))
    .where(
      and(
        eq(jobs.state, 'queued'),
        isNull(jobs.interruptedAt),
        sql`${jobs.runAfter} < now() - make_interval(secs => ${waitSecs})`,
        sql`(${agents.lastSeenAt} is null or ${agents.lastSeenAt} < now() - make_interval(secs => ${waitSecs}))`,
      ),
    );
  const failed = late.map((r) => r.id);
  for (const s of stale) {
    const since = s.lastSeenAt ? `since ${s.lastSeenAt.toISOString()}` : '(never connected)';
    const updated = await db
      .update(jobs)
      .set({
        state: 'failed',
        finishedAt: sql`now()`,
        error: `agent "${s.agent}" is offline ${since}; the job waited ${waitSecs >= 120 ? `${Math.round(waitSecs / 60)} min` : `${Math.round(waitSecs)} s`} and did not run`,
      })
      .where(and(eq(jobs.id, s.id), eq(jobs.state, 'queued')))
      .returning({ id: jobs.id });
    failed.push(...updated.map((r) => r.id));
  }
  return failed;
}

/** Connected agents are "seen" now: an agent's lastSeenAt stays recent while its link is up. */
export async function touchAgents(db: Db, agentIds: string[]): Promise<void> {
  if (agentIds.length === 0) return;
  await db.update(agents).set({ lastSeenAt: sql`now()` }).where(inArray(agents.id, agentIds));
}
