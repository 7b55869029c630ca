import { and, desc, eq, inArray } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Piscina } from 'piscina';
import { beginBusy } from '../../lib/release-memory.ts';
import { BackupSession } from '../backup/backup-session.ts';
import type { ChunkStore } from '../chunk-store/chunk-store.ts';
import type { Db } from '../db/database.ts';
import { datasources, jobs, recoveryPoints } from '../db/schema.ts';
import type { AgentLink } from '../gateway/agent-link.ts';
import type { Gateway } from '../gateway/gateway.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { RestoreSession } from '../restore/restore-session.ts';
import type { RecoveryPointRow } from '../recovery-points/recovery-points.ts';
import type { VaultPointReader } from '../vault/vault-restore.ts';
import {
  claimJob,
  failOrRetry,
  failStranded,
  MAX_RESUMES,
  markSucceeded,
  reapExpiredLeases,
  renewLeases,
  touchAgents,
} from './job-queue.ts';
import {
  type BackupParams,
  expireInterrupted,
  type JobRow,
  requeueInterrupted,
  type RestoreParams,
} from './job-repo.ts';
import { type JobHooks, noHooks } from './job-hooks.ts';

/** What a run returns for an interrupted backup put back in the queue. */
const REQUEUED = Symbol('requeued');
/** Jobs of the server alone (no agent), run through hooks.runServerJob. */
const SERVER_JOBS = new Set<string>(['verify', 'gc', 'online-backup', 'vault-retention', 'vault-check']);
/** How often the queue is polled when nothing kicks it (other processes queue jobs too). */
const POLL_MS = 1000;
/** How often leases are taken over and stranded jobs failed. */
const SWEEP_MS = 5000;
/** How often connected agents are marked seen (the unreachable-agent alert waits an hour). */
const TOUCH_AGENTS_MS = 60_000;

export interface JobRunnerDeps {
  db: Db;
  store: ChunkStore;
  manifests: ManifestStore;
  verifyPool: Piscina;
  gateway: () => Gateway;
  log: Logger;
  /** This server process: the owner of the leases it takes. */
  serverId: string;
  resumeWindowMs: number;
  leaseMs: number;
  maxJobs: number;
  maxJobsPerAgent: number;
  retryBackoffMs: number;
  /** Queued jobs of an agent offline this long fail. */
  offlineWaitMs: number;
  hooks?: JobHooks;
  /** Reads vault recovery points for restores (server/vault). */
  vault?: {
    pointReader(rp: RecoveryPointRow, ds: { path: string; blockSize: number }): Promise<VaultPointReader>;
  };
}

type RunResult = { error: string; counters?: object } | typeof REQUEUED | undefined;

/**
 * Takes jobs from the durable queue (server/jobs/job-queue.ts) and runs them: agent jobs
 * (backup, restore, consistency check) on this process's connected agents, server jobs
 * (verify, gc, online backup, vault retention and check) here. Polls the queue, and is kicked
 * when a job is queued or an agent connects.
 */
export class JobRunner {
  private readonly active = new Map<string, Promise<void>>();
  private readonly timers: NodeJS.Timeout[] = [];
  private claiming: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private lastTouch = 0;
  private readonly hooks: JobHooks;

  constructor(private readonly deps: JobRunnerDeps) {
    this.hooks = deps.hooks ?? noHooks;
  }

  /** Takes over this process's own leases from before a restart, then starts polling. */
  async start(): Promise<void> {
    const { db, serverId, retryBackoffMs, log } = this.deps;
    const taken = await reapExpiredLeases(db, { owner: serverId, retryBackoffMs });
    if (taken.resumed + taken.retried + taken.failed > 0)
      log.warn(taken, 'jobs interrupted by the last stop');
    const every = (ms: number, fn: () => Promise<unknown>) => {
      const t = setInterval(
        () => void fn().catch((err) => log.error({ err }, 'job queue upkeep failed')),
        ms,
      );
      t.unref();
      this.timers.push(t);
    };
    every(POLL_MS, async () => this.kick());
    every(SWEEP_MS, () => this.sweep());
    every(Math.max(200, this.deps.leaseMs / 3), () => this.renew());
    this.kick();
  }

  /** Look for startable work now (a job was queued, an agent connected, a job ended). */
  kick(): void {
    if (this.stopped) return;
    if (this.claiming) {
      this.again = true;
      return;
    }
    this.claiming = this.claimAll()
      .catch((err) => this.deps.log.error({ err }, 'cannot take jobs from the queue'))
      .finally(() => {
        this.claiming = undefined;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  /** Stops taking jobs and waits for running ones (server shutdown, tests). */
  async drain(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearInterval(t);
    await this.claiming;
    await Promise.allSettled([...this.active.values()]);
  }

  private async claimAll(): Promise<void> {
    const gateway = this.deps.gateway();
    while (!this.stopped && this.active.size < this.deps.maxJobs) {
      const job = await claimJob(this.deps.db, {
        owner: this.deps.serverId,
        leaseMs: this.deps.leaseMs,
        agentIds: gateway.connectedAgentIds(),
        maxPerAgent: this.deps.maxJobsPerAgent,
      });
      if (!job) return;
      const endBusy = beginBusy();
      const run = this.run(job).finally(() => {
        endBusy();
        this.active.delete(job.id);
        this.kick();
      });
      this.active.set(job.id, run);
    }
  }

  private async sweep(): Promise<void> {
    const { db, gateway, resumeWindowMs, retryBackoffMs, offlineWaitMs } = this.deps;
    if (Date.now() - this.lastTouch >= TOUCH_AGENTS_MS) {
      this.lastTouch = Date.now();
      await touchAgents(db, gateway().connectedAgentIds());
    }
    await reapExpiredLeases(db, { retryBackoffMs });
    // Failed here, not in a run: they still get their alert.
    const failed = [
      ...(await expireInterrupted(db, resumeWindowMs)),
      ...(await failStranded(db, offlineWaitMs)),
    ];
    if (failed.length === 0) return;
    for (const job of await db.select().from(jobs).where(inArray(jobs.id, failed))) {
      await this.hooks
        .failed(db, job, job.error ?? 'failed')
        .catch((err) => this.deps.log.error({ err }, 'job hook failed'));
    }
  }

  private async renew(): Promise<void> {
    const ids = [...this.active.keys()];
    const held = await renewLeases(this.deps.db, this.deps.serverId, ids, this.deps.leaseMs);
    for (const id of ids) {
      if (!held.has(id) && this.active.has(id))
        this.deps.log.warn({ jobId: id }, 'lost the lease of a running job; its result will not be recorded');
    }
  }

  private async run(job: JobRow): Promise<void> {
    const log = this.deps.log.child({ jobId: job.id, agentId: job.agentId, type: job.type });
    log.info({ attempt: job.attempts }, 'job started');
    let result: RunResult;
    try {
      result = await this.dispatch(job, log);
    } catch (err) {
      log.error({ err }, 'job failed unexpectedly');
      result = { error: (err as Error).message };
    }
    if (result === REQUEUED) {
      log.info('job waits to resume');
      return;
    }
    if (!result) {
      log.info('job succeeded');
      await this.hooks.succeeded(this.deps.db, job).catch((err) => log.error({ err }, 'job hook failed'));
      return;
    }
    const outcome = await failOrRetry(this.deps.db, job, result.error, {
      retryBackoffMs: this.deps.retryBackoffMs,
      counters: result.counters,
      onlyIfRunning: true,
    });
    log.warn(
      { error: result.error, outcome },
      outcome === 'retried' ? 'job failed; it will be retried' : 'job failed',
    );
    if (outcome === 'failed')
      await this.hooks
        .failed(this.deps.db, job, result.error)
        .catch((err) => log.error({ err }, 'job hook failed'));
  }

  private async dispatch(job: JobRow, log: Logger): Promise<RunResult> {
    if (SERVER_JOBS.has(job.type)) {
      const report = await this.hooks.runServerJob(job, log);
      await this.finishServerJob(job, report);
      return undefined;
    }
    const link = job.agentId ? this.deps.gateway().get(job.agentId) : undefined;
    if (!link) {
      // The agent dropped between the claim and now: back to the queue, nothing ran.
      await this.deps.db
        .update(jobs)
        .set({ state: 'queued', leaseUntil: null, attempts: Math.max(0, job.attempts - 1) })
        .where(and(eq(jobs.id, job.id), eq(jobs.state, 'running')));
      return REQUEUED;
    }
    if (job.type === 'restore') return this.runRestore(link, job);
    if (job.type === 'consistency-check') {
      await this.hooks.beforeConsistencyCheck(job, log);
      const r = await this.runBackup(link, job, { full: true, origin: 'consistency-check' });
      if (r === undefined) await this.hooks.afterConsistencyCheck(job, log);
      return r;
    }
    return this.runBackup(link, job, job.params as BackupParams);
  }

  private async finishServerJob(job: JobRow, report: unknown): Promise<void> {
    if (!(await markSucceeded(this.deps.db, job.id, this.deps.serverId, report ?? null)))
      this.deps.log.warn(
        { jobId: job.id },
        'job finished after its lease was taken over; its result is not recorded',
      );
  }

  private async runBackup(link: AgentLink, job: JobRow, params: BackupParams): Promise<RunResult> {
    const { db } = this.deps;
    const [ds] = await db
      .select()
      .from(datasources)
      .where(eq(datasources.id, job.datasourceId ?? ''));
    if (!ds) return { error: 'datasource no longer exists' };
    const base = params.full ? undefined : await this.latestGoodRecoveryPoint(ds.id);
    const session = new BackupSession(this.deps, link, job, ds, base ?? null, params.origin ?? 'manual');
    const outcome = await session.run();
    if (outcome.ok) return undefined;
    const [current] = await db.select().from(jobs).where(eq(jobs.id, job.id));
    const withinWindow =
      !current?.interruptedAt || Date.now() - current.interruptedAt.getTime() < this.deps.resumeWindowMs;
    if (outcome.resumable && withinWindow && job.attempts < MAX_RESUMES) {
      // The link dropped: what was acknowledged is stored and owned; the job waits for its agent.
      await requeueInterrupted(db, job.id, session.counters());
      this.deps.log.warn(
        { jobId: job.id, reason: outcome.error },
        'backup interrupted; it resumes when the agent is back',
      );
      return REQUEUED;
    }
    return { error: outcome.error, counters: session.counters() };
  }

  private async runRestore(link: AgentLink, job: JobRow): Promise<RunResult> {
    const params = job.params as RestoreParams;
    const [rp] = await this.deps.db.select().from(recoveryPoints).where(eq(recoveryPoints.id, params.rpId));
    const [ds] = rp
      ? await this.deps.db.select().from(datasources).where(eq(datasources.id, rp.datasourceId))
      : [];
    if (!rp || !ds) return { error: `recovery point ${params.rpId} no longer exists` };
    let vault: VaultPointReader | undefined;
    if (rp.tier === 'vault') {
      if (!this.deps.vault) return { error: 'this server has no vault to restore from' };
      try {
        vault = await this.deps.vault.pointReader(rp, ds);
      } catch (err) {
        return { error: `cannot open the vault: ${(err as Error).message}` };
      }
    }
    const session = new RestoreSession(this.deps, link, job, params, {
      kind: rp.kind,
      blockSize: ds.blockSize,
      vault,
    });
    const outcome = await session.run();
    if (!outcome.ok) return { error: outcome.error };
    await this.deps.db
      .update(jobs)
      .set({
        state: 'succeeded',
        finishedAt: new Date(),
        leaseUntil: null,
        files: outcome.files,
        // On the wire: blocks as stored; restored: the bytes the agent wrote.
        bytesSent: session.bytesSent,
        bytesDone: outcome.bytes,
        bytesTotal: outcome.bytes,
      })
      .where(and(eq(jobs.id, job.id), eq(jobs.state, 'running')));
    return undefined;
  }

  /** The newest intact disk point: a point verify found corrupt is never an incremental base. */
  private async latestGoodRecoveryPoint(datasourceId: string): Promise<string | undefined> {
    const [rp] = await this.deps.db
      .select({ id: recoveryPoints.id })
      .from(recoveryPoints)
      .where(
        and(
          eq(recoveryPoints.datasourceId, datasourceId),
          eq(recoveryPoints.tier, 'disk'),
          eq(recoveryPoints.status, 'ok'),
        ),
      )
      .orderBy(desc(recoveryPoints.createdAt))
      .limit(1);
    return rp?.id;
  }
}
