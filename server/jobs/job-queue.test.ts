import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { eq, inArray, type SQL, sql } from 'drizzle-orm';
import type { PgUpdateSetSource } from 'drizzle-orm/pg-core';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { waitFor } from '../../test/harness.ts';
import { openTestDatabase } from '../chunk-store/test-database.test-helpers.ts';
import type { Db } from '../db/database.ts';
import { agents, datasources, jobs } from '../db/schema.ts';
import {
  type ClaimOptions,
  claimJob,
  failOrRetry,
  failStranded,
  markSucceeded,
  reapExpiredLeases,
  renewLeases,
  retryDelayMs,
  touchAgents,
} from './job-queue.ts';
import { createJob, getJob, type JobRow, type NewJob } from './job-repo.ts';

/*
 * The durable job queue against a real database: PGlite in a temp folder (one connection, so
 * concurrent claims are serialised), or a fresh PostgreSQL database when
 * HOLDFAST_TEST_DATABASE_URL is set (a pool: claims really run in parallel). Every test starts
 * from an empty jobs table, since claims and sweeps look at every job; agents and datasources
 * are new for each test. Times are compared against the database's now(), never the test's clock.
 */
let dir: string;
let database: Awaited<ReturnType<typeof openTestDatabase>>;
let db: Db;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-job-queue-'));
  database = await openTestDatabase(dir);
  db = database.db;
});
afterAll(async () => {
  await database?.drop();
  await rm(dir, { recursive: true, force: true });
});
beforeEach(async () => {
  await db.delete(jobs);
});

async function rows<T>(query: SQL): Promise<T[]> {
  return ((await db.execute(query)) as unknown as { rows: T[] }).rows;
}

async function newAgent(): Promise<{ id: string; name: string }> {
  const id = randomUUID();
  const name = `agent-${id.slice(0, 8)}`;
  await db.insert(agents).values({ id, name, secretHash: 'x'.repeat(64) });
  return { id, name };
}

async function newDatasource(agentId: string): Promise<string> {
  const id = randomUUID();
  await db
    .insert(datasources)
    .values({ id, agentId, path: `/data/${id}`, kind: 'files', blockSize: 1048576 });
  return id;
}

const verifyJob = (over: Partial<NewJob> = {}) =>
  createJob(db, { type: 'verify', agentId: null, datasourceId: null, params: {}, ...over });
const backupJob = (agentId: string, datasourceId: string, over: Partial<NewJob> = {}) =>
  createJob(db, { type: 'backup', agentId, datasourceId, params: { full: false }, ...over });
const restoreJob = (agentId: string, over: Partial<NewJob> = {}) =>
  createJob(db, {
    type: 'restore',
    agentId,
    datasourceId: null,
    params: { rpId: 'rp', target: '/restore', paths: [] },
    ...over,
  });

function claim(owner: string, agentIds: string[] = [], over: Partial<ClaimOptions> = {}) {
  return claimJob(db, { owner, leaseMs: 60_000, agentIds, maxPerAgent: 10, ...over });
}

/** Claims until the queue has nothing more for this claimer. */
async function claimAll(owner: string, agentIds: string[] = [], over: Partial<ClaimOptions> = {}) {
  const got: JobRow[] = [];
  for (;;) {
    const job = await claim(owner, agentIds, over);
    if (!job) return got;
    got.push(job);
  }
}

const idsOf = (list: { id: string }[]) => list.map((j) => j.id).sort();

async function setJob(id: string, values: PgUpdateSetSource<typeof jobs>): Promise<void> {
  await db.update(jobs).set(values).where(eq(jobs.id, id));
}

/** Seconds from the database's now() to a timestamp of a job (negative: in the past). */
async function secondsFromNow(id: string, column: 'run_after' | 'lease_until'): Promise<number> {
  const [r] = await rows<{ s: number }>(
    sql`select extract(epoch from ${sql.identifier(column)} - now())::float8 as s from jobs where id = ${id}`,
  );
  return Number(r!.s);
}

/** Waits until the database's clock is past the leases of `owner`. */
async function leasesExpired(owner: string): Promise<void> {
  await waitFor(
    `leases of ${owner} expired`,
    async () => {
      const [r] = await rows<{ n: number }>(
        sql`select count(*)::int as n from jobs where lease_owner = ${owner} and state = 'running' and lease_until >= now()`,
      );
      return Number(r!.n) === 0 || undefined;
    },
    10_000,
  );
}

/**
 * Runs claims of one agent's jobs at once. With PostgreSQL the test holds the agent's advisory
 * lock until every claimer has picked its row and waits for that lock, so they all pass the
 * candidate query before any of them commits: the worst interleaving, every time. PGlite has one
 * connection: the claims run one after the other and must come out the same.
 */
async function race<T>(agentId: string, claimers: (() => Promise<T>)[]): Promise<T[]> {
  if (database.driver !== 'postgres') return Promise.all(claimers.map((c) => c()));
  let release!: () => void;
  const released = new Promise<void>((r) => {
    release = r;
  });
  let locked!: () => void;
  const lockHeld = new Promise<void>((r) => {
    locked = r;
  });
  const holder = db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(hashtext(${`holdfast-agent:${agentId}`}))`);
    locked();
    await released;
  });
  await lockHeld;
  const claims = Promise.allSettled(claimers.map((c) => c()));
  try {
    await waitFor(
      'claimers waiting for the agent lock',
      async () => {
        const [r] = await rows<{ n: number }>(sql`
          select count(*)::int as n from pg_locks
          where locktype = 'advisory' and not granted
            and database = (select oid from pg_database where datname = current_database())`);
        return Number(r!.n) === claimers.length || undefined;
      },
      10_000,
    );
  } finally {
    release();
    await holder;
  }
  return (await claims).map((r) => {
    if (r.status === 'rejected') throw r.reason;
    return r.value;
  });
}

describe('claimJob', () => {
  it('gives each queued job to exactly one claimer', async () => {
    const queued: string[] = [];
    for (let i = 0; i < 50; i++) queued.push((await verifyJob()).id);
    // Two processes, each with two claim loops running at once.
    const loops = ['owner-a', 'owner-b', 'owner-a', 'owner-b'].map(async (owner) =>
      (await claimAll(owner)).map((job) => ({ job, owner })),
    );
    const claims = (await Promise.all(loops)).flat();

    expect(claims).toHaveLength(50);
    expect(idsOf(claims.map((c) => c.job))).toEqual([...queued].sort());
    for (const { job, owner } of claims) {
      expect(job).toMatchObject({ state: 'running', leaseOwner: owner, attempts: 1 });
      expect(job.startedAt).toBeInstanceOf(Date);
      expect(job.leaseUntil).toBeInstanceOf(Date);
    }
    expect(claims.some((c) => c.owner === 'owner-a')).toBe(true);
    expect(claims.some((c) => c.owner === 'owner-b')).toBe(true);

    // The database agrees: every job running once, under the owner that got it.
    const stored = await db.select().from(jobs);
    expect(stored).toHaveLength(50);
    const ownerOf = new Map(claims.map((c) => [c.job.id, c.owner]));
    for (const job of stored) {
      expect(job).toMatchObject({ state: 'running', attempts: 1, leaseOwner: ownerOf.get(job.id) });
      expect(await secondsFromNow(job.id, 'lease_until')).toBeGreaterThan(50);
    }
    expect(await claim('owner-c')).toBeUndefined();
  });

  it('claims only due jobs, of the agents given, and agentless jobs for anyone', async () => {
    const a = await newAgent();
    const b = await newAgent();
    const later = await verifyJob();
    await setJob(later.id, { runAfter: sql`now() + interval '1 hour'` });
    const ofB = await restoreJob(b.id);
    const ofA = await restoreJob(a.id);
    const laterOfA = await restoreJob(a.id);
    await setJob(laterOfA.id, { runAfter: sql`now() + interval '1 minute'` });
    const free = await verifyJob();

    // A process with no agent connected: the agentless job only.
    expect(idsOf(await claimAll('p1', []))).toEqual([free.id]);
    // With agent a (and an unknown one): a's due job, not b's, not the ones not due yet.
    expect(idsOf(await claimAll('p2', [a.id, randomUUID()]))).toEqual([ofA.id]);
    expect(idsOf(await claimAll('p3', [b.id]))).toEqual([ofB.id]);
    expect(await claim('p4', [a.id, b.id])).toBeUndefined();
    expect((await getJob(db, later.id)).state).toBe('queued');
    expect((await getJob(db, laterOfA.id)).state).toBe('queued');

    // Once due, they are claimed; an agent's job still only by a process with that agent.
    await db
      .update(jobs)
      .set({ runAfter: sql`now() - interval '1 second'` })
      .where(inArray(jobs.id, [later.id, laterOfA.id]));
    expect(idsOf(await claimAll('p5', [b.id]))).toEqual([later.id]);
    expect(idsOf(await claimAll('p6', [a.id]))).toEqual([laterOfA.id]);
  });

  it('claims interrupted jobs before older queued ones', async () => {
    const a = await newAgent();
    const ds = await newDatasource(a.id);
    const older = await verifyJob();
    const resumed = await backupJob(a.id, ds);
    await setJob(resumed.id, { interruptedAt: sql`now() - interval '1 minute'`, attempts: 1 });
    const first = await claim('p', [a.id]);
    expect(first).toMatchObject({ id: resumed.id, state: 'running', attempts: 2, interruptedAt: null });
    expect((await claim('p', [a.id]))?.id).toBe(older.id);
  });

  it('runs one backup or consistency check of a datasource at a time', async () => {
    const a = await newAgent();
    const ds = await newDatasource(a.id);
    const ds2 = await newDatasource(a.id);
    const first = await backupJob(a.id, ds);
    const second = await backupJob(a.id, ds);
    const check = await createJob(db, {
      type: 'consistency-check',
      agentId: a.id,
      datasourceId: ds,
      params: {},
    });
    const otherDs = await backupJob(a.id, ds2);
    const restoreOfDs = await restoreJob(a.id, { datasourceId: ds });

    // The first backup of ds runs; the second and the check wait, the rest is not held up.
    expect(idsOf(await claimAll('p', [a.id]))).toEqual(idsOf([first, otherDs, restoreOfDs]));
    expect(await claim('q', [a.id])).toBeUndefined();
    expect((await getJob(db, second.id)).state).toBe('queued');
    expect((await getJob(db, check.id)).state).toBe('queued');

    // The first one ends: the second backup runs, the check still waits.
    await setJob(first.id, { state: 'succeeded', finishedAt: sql`now()`, leaseUntil: null });
    const running = await claim('q', [a.id]);
    expect(running?.id).toBe(second.id);
    expect(await claim('q', [a.id])).toBeUndefined();

    // A backup that fails also leaves 'running': the check runs.
    expect(await failOrRetry(db, running!, 'boom', { retryBackoffMs: 1000, onlyIfRunning: true })).toBe(
      'failed',
    );
    expect((await claim('q', [a.id]))?.id).toBe(check.id);
    expect(await claim('q', [a.id])).toBeUndefined();
  });

  it('runs at most maxPerAgent jobs of an agent, without holding up other agents', async () => {
    const a = await newAgent();
    const b = await newAgent();
    const ofA = [await restoreJob(a.id), await restoreJob(a.id), await restoreJob(a.id)];
    const ofB = await restoreJob(b.id);
    const free = await verifyJob();

    const got = await claimAll('p', [a.id, b.id], { maxPerAgent: 2 });
    expect(idsOf(got)).toEqual(idsOf([ofA[0]!, ofA[1]!, ofB, free]));
    expect((await getJob(db, ofA[2]!.id)).state).toBe('queued');
    // The limit holds across processes: another one connected to agent a gets nothing either.
    expect(await claim('q', [a.id], { maxPerAgent: 2 })).toBeUndefined();

    await setJob(ofA[0]!.id, { state: 'succeeded', finishedAt: sql`now()`, leaseUntil: null });
    expect((await claim('q', [a.id], { maxPerAgent: 2 }))?.id).toBe(ofA[2]!.id);
    expect(await claim('q', [a.id], { maxPerAgent: 2 })).toBeUndefined();
  });

  it('runs one garbage collection at a time, without holding up the jobs queued after a second one', async () => {
    const agent = await newAgent();
    const ds = await newDatasource(agent.id);
    const gcJob = () => createJob(db, { type: 'gc', agentId: null, datasourceId: null, params: {} });
    const first = await gcJob();
    expect((await claim('a'))?.id).toBe(first.id);
    const second = await gcJob();
    const backup = await backupJob(agent.id, ds);
    const verify = await verifyJob();
    // The second gc waits, and is skipped, not blocking: the jobs behind it are claimed.
    expect(idsOf(await claimAll('b', [agent.id]))).toEqual(idsOf([backup, verify]));
    await setJob(first.id, { state: 'succeeded' });
    expect((await claim('b'))?.id).toBe(second.id);
  });

  it('a reaper does not take a job whose owner renewed the lease meanwhile', async () => {
    const job = await verifyJob({ maxRetries: 1 });
    await claim('a', [], { leaseMs: 50 });
    await leasesExpired('a');
    // Renewed between the reaper's read and its update: the guard re-checks expiry in the update.
    await renewLeases(db, 'a', [job.id], 60_000);
    const [row] = await db.select().from(jobs).where(eq(jobs.id, job.id));
    const outcome = await failOrRetry(db, row!, 'interrupted', {
      retryBackoffMs: 1000,
      onlyIfRunning: true,
      guard: sql`${jobs.leaseUntil} < now()`,
    });
    expect(outcome).toBe('gone');
    const [after] = await db.select().from(jobs).where(eq(jobs.id, job.id));
    expect(after).toMatchObject({ state: 'running', leaseOwner: 'a', retries: 0 });
  });

  it('keeps the limits when claimers race for one agent', async () => {
    const a = await newAgent();
    const ds = await newDatasource(a.id);

    // maxPerAgent 1, two restores: the agent lock lets only one claimer through.
    await restoreJob(a.id);
    await restoreJob(a.id);
    const restores = await race(a.id, [
      () => claim('p', [a.id], { maxPerAgent: 1 }),
      () => claim('q', [a.id], { maxPerAgent: 1 }),
    ]);
    expect(restores.filter(Boolean)).toHaveLength(1);
    expect(await db.select().from(jobs).where(eq(jobs.state, 'running'))).toHaveLength(1);

    // Two backups of one datasource: one runs, the other claimer gets nothing (not an error)
    // and its backup stays queued.
    await db.delete(jobs);
    await backupJob(a.id, ds);
    await backupJob(a.id, ds);
    const backups = await race(a.id, [() => claim('p', [a.id]), () => claim('q', [a.id])]);
    expect(backups.filter(Boolean)).toHaveLength(1);
    const states = (await db.select().from(jobs)).map((j) => j.state).sort();
    expect(states).toEqual(['queued', 'running']);
  });
});

describe('leases', () => {
  it('renews only the leases the owner still holds', async () => {
    const [j1, j2, j3, j4] = [await verifyJob(), await verifyJob(), await verifyJob(), await verifyJob()];
    expect((await claim('p', [], { leaseMs: 5000 }))?.id).toBe(j1!.id);
    expect((await claim('p', [], { leaseMs: 5000 }))?.id).toBe(j2!.id);
    expect((await claim('q', [], { leaseMs: 5000 }))?.id).toBe(j3!.id);
    expect((await claim('p', [], { leaseMs: 5000 }))?.id).toBe(j4!.id);
    expect(await markSucceeded(db, j4!.id, 'q', { ok: true })).toBe(false);
    expect(await markSucceeded(db, j4!.id, 'p', { ok: true })).toBe(true);

    const all = [j1!.id, j2!.id, j3!.id, j4!.id];
    const held = await renewLeases(db, 'p', all, 120_000);
    expect([...held].sort()).toEqual([j1!.id, j2!.id].sort());
    expect(await secondsFromNow(j1!.id, 'lease_until')).toBeGreaterThan(110);
    expect(await secondsFromNow(j2!.id, 'lease_until')).toBeGreaterThan(110);
    // q's lease is untouched.
    expect(await secondsFromNow(j3!.id, 'lease_until')).toBeLessThan(6);
    expect((await getJob(db, j4!.id)).state).toBe('succeeded');
    expect((await renewLeases(db, 'p', [], 1000)).size).toBe(0);
  });

  it('loses a lease that expired and was taken over by another process', async () => {
    const a = await newAgent();
    const ds = await newDatasource(a.id);
    const job = await backupJob(a.id, ds);
    expect((await claim('old', [a.id], { leaseMs: 50 }))?.id).toBe(job.id);
    await leasesExpired('old');

    expect(await reapExpiredLeases(db, { retryBackoffMs: 1000 })).toEqual({
      resumed: 1,
      retried: 0,
      failed: 0,
    });
    const taken = await claim('new', [a.id], { leaseMs: 60_000 });
    expect(taken).toMatchObject({ id: job.id, leaseOwner: 'new', attempts: 2 });

    expect((await renewLeases(db, 'old', [job.id], 60_000)).size).toBe(0);
    expect([...(await renewLeases(db, 'new', [job.id], 60_000))]).toEqual([job.id]);
    expect(await markSucceeded(db, job.id, 'old', null)).toBe(false);
    expect((await getJob(db, job.id)).state).toBe('running');
  });
});

describe('reapExpiredLeases', () => {
  it('takes over jobs whose lease expired: backups resume, others retry or fail', async () => {
    const a = await newAgent();
    const ds = await newDatasource(a.id);
    const backup = await backupJob(a.id, ds);
    expect((await claim('dead', [a.id], { leaseMs: 50 }))?.id).toBe(backup.id);
    const retrying = await verifyJob({ maxRetries: 2 });
    expect((await claim('dead', [], { leaseMs: 50 }))?.id).toBe(retrying.id);
    const lastTry = await verifyJob();
    expect((await claim('dead', [], { leaseMs: 50 }))?.id).toBe(lastTry.id);
    const alive = await verifyJob();
    expect((await claim('alive', [], { leaseMs: 60_000 }))?.id).toBe(alive.id);
    await leasesExpired('dead');

    expect(await reapExpiredLeases(db, { retryBackoffMs: 10_000 })).toEqual({
      resumed: 1,
      retried: 1,
      failed: 1,
    });

    const b = await getJob(db, backup.id);
    expect(b).toMatchObject({ state: 'queued', leaseUntil: null, attempts: 1, retries: 0, error: null });
    expect(b.interruptedAt).toBeInstanceOf(Date);

    const r = await getJob(db, retrying.id);
    expect(r).toMatchObject({ state: 'queued', retries: 1, leaseUntil: null });
    expect(r.error).toMatch(/interrupted/);
    const wait = await secondsFromNow(retrying.id, 'run_after');
    expect(wait).toBeGreaterThan(9);
    expect(wait).toBeLessThanOrEqual(10);

    const f = await getJob(db, lastTry.id);
    expect(f).toMatchObject({
      state: 'failed',
      leaseUntil: null,
      error: 'interrupted: the server process running the job stopped',
    });
    expect(f.finishedAt).toBeInstanceOf(Date);

    expect(await getJob(db, alive.id)).toMatchObject({ state: 'running', leaseOwner: 'alive' });
    // Nothing more to take over.
    expect(await reapExpiredLeases(db, { retryBackoffMs: 10_000 })).toEqual({
      resumed: 0,
      retried: 0,
      failed: 0,
    });
  });

  it("takes over a restarted process's own jobs before their lease expires, not others'", async () => {
    const a = await newAgent();
    const ds = await newDatasource(a.id);
    const backup = await backupJob(a.id, ds);
    expect((await claim('me', [a.id]))?.id).toBe(backup.id);
    const mine = await verifyJob({ maxRetries: 1 });
    expect((await claim('me'))?.id).toBe(mine.id);
    const theirs = await verifyJob({ maxRetries: 1 });
    expect((await claim('them'))?.id).toBe(theirs.id);

    // Leases still valid: a sweep takes nothing.
    expect(await reapExpiredLeases(db, { retryBackoffMs: 1000 })).toEqual({
      resumed: 0,
      retried: 0,
      failed: 0,
    });
    expect(await reapExpiredLeases(db, { owner: 'me', retryBackoffMs: 1000 })).toEqual({
      resumed: 1,
      retried: 1,
      failed: 0,
    });
    const b = await getJob(db, backup.id);
    expect(b.state).toBe('queued');
    expect(b.interruptedAt).toBeInstanceOf(Date);
    expect(await getJob(db, mine.id)).toMatchObject({ state: 'queued', retries: 1 });
    expect(await getJob(db, theirs.id)).toMatchObject({ state: 'running', leaseOwner: 'them', retries: 0 });
  });
});

describe('failOrRetry', () => {
  it('computes the backoff: base, 4x, 16x..., at most an hour', () => {
    expect([0, 1, 2, 3].map((n) => retryDelayMs(n, 1000))).toEqual([1000, 4000, 16_000, 64_000]);
    expect(retryDelayMs(10, 1000)).toBe(3_600_000);
    expect(retryDelayMs(2, 600_000)).toBe(3_600_000);
  });

  it('retries with growing backoff, then fails for good with the error', async () => {
    const job = await verifyJob({ maxRetries: 3 });
    let row = (await claim('p'))!;
    for (const [i, secs] of [2, 8, 32].entries()) {
      const outcome = await failOrRetry(db, row, `boom ${i}`, {
        retryBackoffMs: 2000,
        onlyIfRunning: true,
        counters: { bytesSent: 100 * (i + 1) },
      });
      expect(outcome).toBe('retried');
      const after = await getJob(db, job.id);
      expect(after).toMatchObject({
        state: 'queued',
        retries: i + 1,
        leaseUntil: null,
        bytesSent: 100 * (i + 1),
      });
      expect(after.error).toContain(`attempt ${i + 1} of 4 failed`);
      expect(after.error).toContain(`boom ${i}`);
      const wait = await secondsFromNow(job.id, 'run_after');
      expect(wait).toBeGreaterThan(secs - 1);
      expect(wait).toBeLessThanOrEqual(secs);
      // Not claimed during its backoff; claimed once it is over.
      expect(await claim('p')).toBeUndefined();
      await setJob(job.id, { runAfter: sql`now() - interval '1 millisecond'` });
      row = (await claim('p'))!;
      expect(row).toMatchObject({ id: job.id, state: 'running', attempts: i + 2, retries: i + 1 });
    }
    expect(await failOrRetry(db, row, 'final boom', { retryBackoffMs: 2000, onlyIfRunning: true })).toBe(
      'failed',
    );
    const failed = await getJob(db, job.id);
    expect(failed).toMatchObject({ state: 'failed', error: 'final boom', leaseUntil: null, retries: 3 });
    expect(failed.finishedAt).toBeInstanceOf(Date);
    expect(await claim('p')).toBeUndefined();
  });

  it('caps the backoff at an hour', async () => {
    const job = await verifyJob({ maxRetries: 9 });
    await setJob(job.id, { retries: 4 });
    const row = (await claim('p'))!;
    expect(await failOrRetry(db, row, 'boom', { retryBackoffMs: 60_000, onlyIfRunning: true })).toBe(
      'retried',
    );
    const wait = await secondsFromNow(job.id, 'run_after');
    expect(wait).toBeGreaterThan(3599);
    expect(wait).toBeLessThanOrEqual(3600);
    expect((await getJob(db, job.id)).error).toContain('retrying in 3600 s');
  });

  it("returns 'gone' for a job that is no longer running, and leaves it alone", async () => {
    const withRetries = await verifyJob({ maxRetries: 2 });
    const noRetries = await verifyJob();
    const r1 = (await claim('p'))!;
    const r2 = (await claim('p'))!;
    expect(await markSucceeded(db, withRetries.id, 'p', { ok: 1 })).toBe(true);
    await setJob(noRetries.id, { state: 'cancelled', finishedAt: sql`now()`, leaseUntil: null });
    const opts = { retryBackoffMs: 1000, onlyIfRunning: true };
    expect(await failOrRetry(db, r1, 'late', opts)).toBe('gone');
    expect(await failOrRetry(db, r2, 'late', opts)).toBe('gone');
    expect(await getJob(db, withRetries.id)).toMatchObject({ state: 'succeeded', retries: 0, error: null });
    expect(await getJob(db, noRetries.id)).toMatchObject({ state: 'cancelled', error: null });

    // Without onlyIfRunning a queued job counts too; a finished one never does.
    const queued = await verifyJob();
    expect(await failOrRetry(db, queued, 'cannot start', { retryBackoffMs: 1000 })).toBe('failed');
    expect(await getJob(db, queued.id)).toMatchObject({ state: 'failed', error: 'cannot start' });
    expect(await failOrRetry(db, r2, 'late', { retryBackoffMs: 1000 })).toBe('gone');
  });
});

describe('failStranded', () => {
  it('fails queued jobs whose deadline passed', async () => {
    const runningLate = await verifyJob();
    expect((await claim('p'))?.id).toBe(runningLate.id);
    const late = await verifyJob();
    const inTime = await verifyJob();
    await setJob(late.id, { deadline: sql`now() - interval '1 minute'` });
    await setJob(inTime.id, { deadline: sql`now() + interval '1 hour'` });
    // A job that started in time is not "stranded".
    await setJob(runningLate.id, { deadline: sql`now() - interval '1 minute'` });

    expect(await failStranded(db, 3_600_000)).toHaveLength(1);
    const failed = await getJob(db, late.id);
    expect(failed.state).toBe('failed');
    expect(failed.finishedAt).toBeInstanceOf(Date);
    expect(failed.error).toBe(
      `did not run to completion before its deadline ${failed.deadline!.toISOString().slice(0, 19)}Z`,
    );
    expect((await getJob(db, inTime.id)).state).toBe('queued');
    expect((await getJob(db, runningLate.id)).state).toBe('running');
    expect(await failStranded(db, 3_600_000)).toHaveLength(0);
  });

  it('fails queued jobs of an agent offline for longer than the wait, and only those', async () => {
    const offline = await newAgent();
    const never = await newAgent();
    const recent = await newAgent();
    await db
      .update(agents)
      .set({ lastSeenAt: sql`now() - interval '2 hours'` })
      .where(eq(agents.id, offline.id));
    await touchAgents(db, [recent.id]);
    const ds = await newDatasource(offline.id);
    const longAgo = sql`now() - interval '2 hours'`;

    const stranded = await restoreJob(offline.id);
    await setJob(stranded.id, { runAfter: longAgo });
    const neverRan = await restoreJob(never.id);
    await setJob(neverRan.id, { runAfter: longAgo });
    // Queued recently (e.g. a retry whose backoff just ended): it still gets its wait.
    const justQueued = await restoreJob(offline.id);
    // The agent was seen within the wait.
    const ofRecent = await restoreJob(recent.id);
    await setJob(ofRecent.id, { runAfter: longAgo });
    // Interrupted mid-run: the resume window decides, not this sweep.
    const interrupted = await backupJob(offline.id, ds);
    await setJob(interrupted.id, { runAfter: longAgo, interruptedAt: longAgo });
    // Agentless jobs have no agent to wait for.
    const free = await verifyJob();
    await setJob(free.id, { runAfter: longAgo });

    expect(await failStranded(db, 3_600_000)).toHaveLength(2);
    const s = await getJob(db, stranded.id);
    expect(s.state).toBe('failed');
    expect(s.finishedAt).toBeInstanceOf(Date);
    expect(s.error).toContain(`agent "${offline.name}" is offline since `);
    expect(s.error).toContain('waited 60 min');
    const n = await getJob(db, neverRan.id);
    expect(n.state).toBe('failed');
    expect(n.error).toContain(`agent "${never.name}" is offline (never connected)`);
    for (const id of [justQueued.id, ofRecent.id, interrupted.id, free.id])
      expect((await getJob(db, id)).state).toBe('queued');
    expect(await failStranded(db, 3_600_000)).toHaveLength(0);
  });
});

describe('touchAgents', () => {
  it('marks the given agents seen now, and no others', async () => {
    const a = await newAgent();
    const b = await newAgent();
    const c = await newAgent();
    await touchAgents(db, []);
    await touchAgents(db, [a.id, b.id]);
    const seen = await rows<{ id: string; recent: boolean | null }>(sql`
      select id, last_seen_at > now() - interval '10 seconds' and last_seen_at <= now() as recent
      from agents where id in (${a.id}, ${b.id}, ${c.id})`);
    const recent = new Map(seen.map((r) => [r.id, r.recent]));
    expect(recent.get(a.id)).toBe(true);
    expect(recent.get(b.id)).toBe(true);
    expect(recent.get(c.id)).toBeNull();
  });
});
