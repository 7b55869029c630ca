import { and, desc, eq } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Piscina } from 'piscina';
import { BackupSession } from '../backup/backup-session.ts';
import type { ChunkStore } from '../chunk-store/chunk-store.ts';
import type { Db } from '../db/database.ts';
import { datasources, jobs, recoveryPoints } from '../db/schema.ts';
import type { AgentLink } from '../gateway/agent-link.ts';
import type { Gateway } from '../gateway/gateway.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { RestoreSession } from '../restore/restore-session.ts';
import {
  type BackupParams,
  expireInterrupted,
  requeueInterrupted,
  type JobRow,
  markFailed,
  markRunning,
  queuedJobsOf,
  type RestoreParams,
} from './job-repo.ts';

/** Resumes per backup, a guard against an agent that crashes on the same data every time. */
const MAX_ATTEMPTS = 10;
/** What runBackup returns for an interrupted backup put back in the queue. */
const REQUEUED = Symbol('requeued');

export interface JobRunnerDeps {
  db: Db;
  store: ChunkStore;
  manifests: ManifestStore;
  verifyPool: Piscina;
  resumeWindowMs: number;
  gateway: () => Gateway;
  log: Logger;
}

/**
 * Starts queued jobs on their agents: at once when the agent is connected, otherwise when it
 * connects. One backup runs at a time per datasource; later ones wait in the queue.
 */
export class JobRunner {
  private readonly active = new Map<string, Promise<void>>();
  private readonly busyDatasources = new Set<string>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly deps: JobRunnerDeps) {
    // Interrupted backups whose agent stays away longer than the resume window fail.
    this.sweeper = setInterval(
      () => void expireInterrupted(deps.db, deps.resumeWindowMs).catch(() => {}),
      Math.min(15_000, Math.max(1000, deps.resumeWindowMs / 4)),
    );
    this.sweeper.unref();
  }

  /** Look for startable work of one agent (after a job was queued or the agent connected). */
  kick(agentId: string): void {
    const link = this.deps.gateway().get(agentId);
    if (!link) return;
    void this.startQueued(link).catch((err) =>
      this.deps.log.error({ err, agentId }, 'cannot start queued jobs'),
    );
  }

  /** Waits for running jobs (server shutdown, tests). */
  async drain(): Promise<void> {
    clearInterval(this.sweeper);
    await Promise.allSettled([...this.active.values()]);
  }

  private async startQueued(link: AgentLink): Promise<void> {
    for (const job of await queuedJobsOf(this.deps.db, link.agentId)) {
      if (this.active.has(job.id)) continue;
      if (job.type === 'backup' && job.datasourceId && this.busyDatasources.has(job.datasourceId)) continue;
      if (!(await markRunning(this.deps.db, job.id))) continue;
      if (job.type === 'backup' && job.datasourceId) this.busyDatasources.add(job.datasourceId);
      const run = this.run(link, job).finally(() => {
        this.active.delete(job.id);
        if (job.datasourceId) this.busyDatasources.delete(job.datasourceId);
        this.kick(link.agentId);
      });
      this.active.set(job.id, run);
    }
  }

  private async run(link: AgentLink, job: JobRow): Promise<void> {
    const log = this.deps.log.child({ jobId: job.id, agentId: job.agentId, type: job.type });
    log.info('job started');
    try {
      const result =
        job.type === 'backup' ? await this.runBackup(link, job) : await this.runRestore(link, job);
      if (result === REQUEUED) log.info('job waits to resume');
      else if (result) log.warn({ error: result }, 'job failed');
      else log.info('job succeeded');
    } catch (err) {
      log.error({ err }, 'job failed unexpectedly');
      await markFailed(this.deps.db, job.id, (err as Error).message).catch(() => {});
    }
  }

  /** Returns the error message of a failed job, or undefined when it succeeded or will resume. */
  private async runBackup(link: AgentLink, job: JobRow): Promise<string | typeof REQUEUED | undefined> {
    const { db } = this.deps;
    const [ds] = await db.select().from(datasources).where(eq(datasources.id, job.datasourceId!));
    if (!ds) return this.fail(job, 'datasource no longer exists');
    const params = job.params as BackupParams;
    const base = params.full ? undefined : await this.latestRecoveryPoint(ds.id);
    const session = new BackupSession(this.deps, link, job, ds, base ?? null);
    const outcome = await session.run();
    if (outcome.ok) return undefined;
    const [current] = await db.select().from(jobs).where(eq(jobs.id, job.id));
    const withinWindow =
      !current?.interruptedAt || Date.now() - current.interruptedAt.getTime() < this.deps.resumeWindowMs;
    if (outcome.resumable && withinWindow && job.attempts < MAX_ATTEMPTS) {
      // The link dropped: what was acknowledged is stored and owned; the job waits for its agent.
      await requeueInterrupted(db, job.id, session.counters());
      this.deps.log.warn(
        { jobId: job.id, reason: outcome.error },
        'backup interrupted; it resumes when the agent is back',
      );
      return REQUEUED;
    }
    return this.fail(job, outcome.error, session.counters());
  }

  private async runRestore(link: AgentLink, job: JobRow): Promise<string | undefined> {
    const params = job.params as RestoreParams;
    const [rp] = await this.deps.db.select().from(recoveryPoints).where(eq(recoveryPoints.id, params.rpId));
    const [ds] = rp
      ? await this.deps.db.select().from(datasources).where(eq(datasources.id, rp.datasourceId))
      : [];
    if (!rp || !ds) return this.fail(job, `recovery point ${params.rpId} no longer exists`);
    const session = new RestoreSession(this.deps, link, job, params, {
      kind: rp.kind,
      blockSize: ds.blockSize,
    });
    const outcome = await session.run();
    if (!outcome.ok) return this.fail(job, outcome.error);
    await this.deps.db
      .update(jobs)
      .set({
        state: 'succeeded',
        finishedAt: new Date(),
        files: outcome.files,
        // On the wire: blocks as stored; restored: the bytes the agent wrote.
        bytesSent: session.bytesSent,
        bytesDone: outcome.bytes,
        bytesTotal: outcome.bytes,
      })
      .where(and(eq(jobs.id, job.id), eq(jobs.state, 'running')));
    return undefined;
  }

  private async fail(job: JobRow, error: string, counters = {}): Promise<string> {
    await markFailed(this.deps.db, job.id, error, counters);
    return error;
  }

  private async latestRecoveryPoint(datasourceId: string): Promise<string | undefined> {
    const [rp] = await this.deps.db
      .select({ id: recoveryPoints.id })
      .from(recoveryPoints)
      .where(and(eq(recoveryPoints.datasourceId, datasourceId), eq(recoveryPoints.tier, 'disk')))
      .orderBy(desc(recoveryPoints.createdAt))
      .limit(1);
    return rp?.id;
  }
}
