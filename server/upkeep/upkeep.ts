import { and, desc, eq, gt, inArray, isNotNull, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { AlertMonitor } from '../alerts/monitor.ts';
import type { Db } from '../db/database.ts';
import { jobs, vaults } from '../db/schema.ts';
import { pruneJobHistory } from '../jobs/job-repo.ts';
import { requestGc } from '../jobs/job-requests.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { applyRetention } from '../retention/retention.ts';
import { tickOnlineSchedules } from '../scheduler/online-schedule.ts';
import { Scheduler } from '../scheduler/scheduler.ts';
import { requestVaultRetention } from '../vault/vault-maintenance.ts';

/** Scheduler ticks: slots are minutes apart, a few seconds late is fine. */
const TICK_MS = 5000;
/** Alerts, retention and the daily garbage collection. */
const SLOW_MS = 60_000;
const GC_EVERY_MS = 24 * 3_600_000;
/** Finished jobs are kept this long (they are the job history `jobs list` shows). */
const JOB_HISTORY_MS = 90 * 24 * 3_600_000;
/** Vault retention waits until online backups have been quiet this long (a batch of groups finishes first). */
export const VAULT_RETENTION_QUIET_MS = 10 * 60_000;
/** ...and runs at least this often (expired soft deletes are purged even without new backups). */
export const VAULT_RETENTION_EVERY_MS = 24 * 3_600_000;

export interface UpkeepDeps {
  db: Db;
  manifests: ManifestStore;
  log: Logger;
  timeZone: string;
  storeDir: string;
  storeAlertPercent: number;
  isOnline(agentId: string): boolean;
  /** Jobs were queued for this agent (or for the server when null). */
  jobQueued(agentId: string | null): void;
}

/**
 * The periodic work of a server process: turn due schedule slots into jobs, watch alert
 * conditions, prune recovery points past their retention, queue the daily garbage
 * collection, and queue vault retention (vaultRetentionDue). Every step is safe with several processes on one database (the scheduler locks
 * its marks, retention deletes in a transaction, gc is queued once).
 */
export class Upkeep {
  readonly scheduler: Scheduler;
  private readonly monitor: AlertMonitor;
  private readonly timers = new Set<NodeJS.Timeout>();
  private running = new Set<Promise<unknown>>();
  private stopped = false;

  constructor(private readonly deps: UpkeepDeps) {
    this.scheduler = new Scheduler({ db: deps.db, timeZone: deps.timeZone, log: deps.log });
    this.monitor = new AlertMonitor({
      db: deps.db,
      storeDir: deps.storeDir,
      log: deps.log,
      timeZone: deps.timeZone,
      isOnline: deps.isOnline,
      thresholds: { storeWarningPercent: Math.min(deps.storeAlertPercent, 99) },
    });
  }

  start(): void {
    this.loop('schedule', TICK_MS, () => this.tick());
    this.loop('upkeep', SLOW_MS, () => this.slow());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers) clearTimeout(t);
    await Promise.allSettled([...this.running]);
  }

  private async tick(): Promise<void> {
    const now = new Date();
    const report = await this.scheduler.tick(now);
    for (const run of report.queued) this.deps.jobQueued(run.agentId);
    const online = await tickOnlineSchedules(this.deps.db, now, {
      timeZone: this.deps.timeZone,
      log: this.deps.log,
    });
    if (online.length > 0) this.deps.jobQueued(null);
  }

  private async slow(): Promise<void> {
    const now = new Date();
    // Each step on its own: one failing (a bad stored policy, a full disk) must not stop the others.
    await this.step('alert check', () => this.monitor.check(now));
    await this.step('retention', async () => {
      const retention = await applyRetention({ db: this.deps.db, manifests: this.deps.manifests }, now);
      if (retention.pruned.length > 0)
        this.deps.log.info(
          { pruned: retention.pruned.length },
          'recovery points past their retention pruned',
        );
      if (retention.manifestErrors.length > 0)
        this.deps.log.warn(
          { errors: retention.manifestErrors },
          'pruned recovery points whose manifests could not be removed (garbage collection removes them later)',
        );
    });
    await this.step('gc scheduling', async () => {
      if (!(await this.gcDue())) return;
      await requestGc(this.deps.db, {}, 'system');
      this.deps.jobQueued(null);
    });
    await this.step('vault retention scheduling', async () => {
      if (!(await vaultRetentionDue(this.deps.db, now))) return;
      const job = await requestVaultRetention(this.deps.db, {}, 'system');
      this.deps.log.info({ jobId: job.id }, 'vault retention queued');
      this.deps.jobQueued(null);
    });
    await this.step('job history', async () => {
      const removed = await pruneJobHistory(this.deps.db, JOB_HISTORY_MS);
      if (removed > 0)
        this.deps.log.info({ removed }, 'finished jobs older than the history kept were removed');
    });
  }

  private async step(name: string, fn: () => Promise<unknown>): Promise<void> {
    await fn().catch((err) => this.deps.log.error({ err }, `${name} failed`));
  }

  /** No garbage collection queued in the last day. */
  private async gcDue(): Promise<boolean> {
    const [recent] = await this.deps.db
      .select({ id: jobs.id })
      .from(jobs)
      .where(
        and(
          eq(jobs.type, 'gc'),
          gt(jobs.createdAt, sql`now() - make_interval(secs => ${GC_EVERY_MS / 1000})`),
        ),
      )
      .limit(1);
    return !recent;
  }

  /** Runs `fn` every `ms`, never overlapping itself; a failure is logged and the loop goes on. */
  private loop(name: string, ms: number, fn: () => Promise<void>): void {
    const next = () => {
      if (this.stopped) return;
      const t = setTimeout(() => {
        this.timers.delete(t);
        const run = fn()
          .catch((err) => this.deps.log.error({ err }, `${name} failed`))
          .finally(() => {
            this.running.delete(run);
            next();
          });
        this.running.add(run);
      }, ms);
      t.unref();
      this.timers.add(t);
    };
    next();
  }
}

/**
 * Vault retention (soft delete by the groups' online.retention, purge, prune) is due when a vault
 * is configured, no online backup or vault retention is queued or running, and either an online
 * backup succeeded since the last vault-retention job was queued and the newest one finished at
 * least VAULT_RETENTION_QUIET_MS ago, or the last vault-retention job (or the vault's creation)
 * is more than VAULT_RETENTION_EVERY_MS old.
 */
export async function vaultRetentionDue(db: Db, now: Date): Promise<boolean> {
  const [vault] = await db.select({ createdAt: vaults.createdAt }).from(vaults).limit(1);
  if (!vault) return false;
  const [busy] = await db
    .select({ id: jobs.id })
    .from(jobs)
    .where(
      and(
        inArray(jobs.type, ['online-backup', 'vault-retention']),
        inArray(jobs.state, ['queued', 'running']),
      ),
    )
    .limit(1);
  if (busy) return false;
  const [last] = await db
    .select({ createdAt: jobs.createdAt })
    .from(jobs)
    .where(eq(jobs.type, 'vault-retention'))
    .orderBy(desc(jobs.createdAt))
    .limit(1);
  const since = last?.createdAt ?? vault.createdAt;
  if (now.getTime() - since.getTime() >= VAULT_RETENTION_EVERY_MS) return true;
  const [online] = await db
    .select({ finishedAt: jobs.finishedAt })
    .from(jobs)
    .where(and(eq(jobs.type, 'online-backup'), eq(jobs.state, 'succeeded'), isNotNull(jobs.finishedAt)))
    .orderBy(desc(jobs.finishedAt))
    .limit(1);
  const finished = online?.finishedAt;
  if (!finished) return false;
  if (last && finished.getTime() <= last.createdAt.getTime()) return false;
  return now.getTime() - finished.getTime() >= VAULT_RETENTION_QUIET_MS;
}
