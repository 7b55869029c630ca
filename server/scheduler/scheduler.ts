import { and, eq, inArray } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db, Tx } from '../db/database.ts';
import { datasources, jobs } from '../db/schema.ts';
import type { BackupParams, JobRow } from '../jobs/job-repo.ts';
import { createJob } from '../jobs/job-repo.ts';
import { dropMark, datasourceOfMark, lockMark, markKey, readMarks, setMark } from './marks.ts';
import { loadMembers, type Member } from './members.ts';
import {
  BACKUP_KINDS,
  backupPriority,
  checkTimeZone,
  localTimeZone,
  type SlotKind,
  slotsBetween,
} from './slots.ts';

/*
 * Turns group policies into job rows. No timers here: the server calls tick(new Date()) every
 * few seconds, tests call it with simulated times.
 *
 * For each member datasource, the slots due since its schedule mark (and up to `now`) make at
 * most one backup job per tick, of the most important kind due (recovery point, then express
 * full, then sync); the mark then moves to the latest of them. So an outage of any length costs
 * one catch-up backup, not one per missed slot, and a restart never repeats a slot. All of it
 * happens in one transaction holding the mark row, so two server processes ticking together
 * never make the same job twice.
 */

/** Scheduled work is retried: an agent rebooting mid-backup should not cost a recovery point. */
const SCHEDULED_RETRIES = 3;
/** A consistency check for an inconsistent replica is queued again at most this often. */
const DEFAULT_NEEDED_CHECK_BACKOFF_MS = 60 * 60_000;

export interface SchedulerOptions {
  db: Db;
  /** IANA zone the policies' times are in; default the server's own. */
  timeZone?: string;
  log?: Logger;
  /** How long after queuing a consistency check for an inconsistent replica another may be queued. */
  neededCheckBackoffMs?: number;
}

/** A job this tick created. */
export interface ScheduledRun {
  jobId: string;
  type: 'backup' | 'consistency-check';
  trigger: 'schedule' | 'system';
  /** The slot kind that made it (`needed`: a consistency check for an inconsistent replica). */
  kind: SlotKind | 'needed';
  agentId: string;
  datasourceId: string;
  groupId: string;
  /** The slot it stands for (for `needed`: the tick's time). */
  slotAt: Date;
}

export interface TickReport {
  /** New jobs; the caller kicks the job runner for their agents. */
  queued: ScheduledRun[];
  /** Due slots taken care of by a job already queued (maybe promoted, see `promoted`). */
  covered: { datasourceId: string; jobId: string; kind: SlotKind }[];
  /** Queued jobs whose origin was raised to the kind now due (a sync waiting became a recovery point). */
  promoted: { datasourceId: string; jobId: string; kind: SlotKind }[];
  /** Daily consistency checks not queued because their window was already over (server was down). */
  windowMissed: { datasourceId: string; slotAt: Date }[];
  /** Datasources whose scheduling failed this tick (logged; tried again next tick). */
  failed: { datasourceId: string; error: string }[];
}

/** Params of the backup a slot kind asks for. */
export function backupParamsFor(kind: SlotKind): BackupParams {
  switch (kind) {
    case 'recovery-point':
      return { full: false, origin: 'recovery-point' };
    case 'express-full':
      return { full: true, origin: 'express-full' };
    default:
      return { full: false, origin: 'sync' };
  }
}

/** How an existing job's origin ranks against a slot kind; manual counts as a sync. */
function originPriority(origin: BackupParams['origin']): number {
  return origin === 'recovery-point' || origin === 'express-full' ? backupPriority(origin) : 1;
}

const ACTIVE: JobRow['state'][] = ['queued', 'running'];

export class Scheduler {
  readonly timeZone: string;
  private readonly db: Db;
  private readonly log: Logger | undefined;
  private readonly neededBackoffMs: number;
  /** Invalid group policies already logged (group id + update time), so each is said once. */
  private readonly warned = new Set<string>();

  constructor(opts: SchedulerOptions) {
    this.db = opts.db;
    this.timeZone = checkTimeZone(opts.timeZone ?? localTimeZone());
    this.log = opts.log;
    this.neededBackoffMs = opts.neededCheckBackoffMs ?? DEFAULT_NEEDED_CHECK_BACKOFF_MS;
  }

  async tick(now: Date): Promise<TickReport> {
    const report: TickReport = { queued: [], covered: [], promoted: [], windowMissed: [], failed: [] };
    // Marks before members: a mark whose datasource is no member by the time members are read
    // is stale for sure (see dropStaleMarks).
    const marks = await readMarks(this.db);
    const { members, invalid } = await loadMembers(this.db);
    for (const g of invalid) {
      const key = `${g.groupId}@${g.updatedAt.getTime()}`;
      if (this.warned.has(key)) continue;
      this.warned.add(key);
      this.log?.warn(
        { group: g.groupName },
        'group policy does not validate: its datasources are not scheduled',
      );
    }
    const checking = await this.activeChecks(members);

    for (const m of members) {
      if (!this.needsWork(m, marks, checking, now)) continue;
      try {
        await this.db.transaction((tx) => this.scheduleMember(tx, m, now, report));
      } catch (err) {
        report.failed.push({ datasourceId: m.datasourceId, error: (err as Error).message });
        this.log?.error({ err, datasourceId: m.datasourceId }, 'scheduling a datasource failed');
      }
    }
    await this.dropStaleMarks(marks, members);

    for (const r of report.queued)
      this.log?.info(
        { jobId: r.jobId, type: r.type, kind: r.kind, datasourceId: r.datasourceId, slotAt: r.slotAt },
        'scheduled job queued',
      );
    return report;
  }

  /** Datasources with a consistency check queued or running (for `when: needed`). */
  private async activeChecks(members: Member[]): Promise<Set<string>> {
    const ids = members
      .filter((m) => m.disk.consistencyCheck.when === 'needed' && m.replicaState === 'inconsistent')
      .map((m) => m.datasourceId);
    if (ids.length === 0) return new Set();
    const rows = await this.db
      .select({ id: jobs.datasourceId })
      .from(jobs)
      .where(
        and(inArray(jobs.datasourceId, ids), eq(jobs.type, 'consistency-check'), inArray(jobs.state, ACTIVE)),
      );
    return new Set(rows.map((r) => r.id!));
  }

  /** Read without locks: most ticks find nothing due and open no transaction at all. */
  private needsWork(m: Member, marks: Map<string, Date>, checking: Set<string>, now: Date): boolean {
    const opts = { timeZone: this.timeZone };
    const backupMark = marks.get(markKey(m.datasourceId, 'backup'));
    if (!backupMark) return true;
    if (slotsBetween(m.disk, backupMark, now, { ...opts, kinds: BACKUP_KINDS }).length > 0) return true;
    const check = m.disk.consistencyCheck;
    if (check.when === 'daily') {
      const mark = marks.get(markKey(m.datasourceId, 'consistency'));
      if (!mark) return true;
      if (slotsBetween(m.disk, mark, now, { ...opts, kinds: ['consistency-check'] }).length > 0) return true;
    } else if (m.replicaState === 'inconsistent' && !checking.has(m.datasourceId)) {
      const last = marks.get(markKey(m.datasourceId, 'consistency-needed'));
      if (!last || now.getTime() - last.getTime() >= this.neededBackoffMs) return true;
    }
    return false;
  }

  private async scheduleMember(tx: Tx, m: Member, now: Date, report: TickReport): Promise<void> {
    // The backup mark is taken first and held to the end: it serialises everything below for
    // this datasource across server processes.
    await this.scheduleBackup(tx, m, now, report);
    if (m.disk.consistencyCheck.when === 'daily') await this.scheduleDailyCheck(tx, m, now, report);
    else await this.scheduleNeededCheck(tx, m, now, report);
  }

  private async scheduleBackup(tx: Tx, m: Member, now: Date, report: TickReport): Promise<void> {
    const key = markKey(m.datasourceId, 'backup');
    const mark = await lockMark(tx, key, now);
    if (!mark) return;
    const due = slotsBetween(m.disk, mark, now, { timeZone: this.timeZone, kinds: BACKUP_KINDS });
    if (due.length === 0) return;
    const kind = due.reduce(
      (best, s) => (backupPriority(s.kind) > backupPriority(best) ? s.kind : best),
      due[0]!.kind,
    );
    const latest = due[due.length - 1]!.at;
    await setMark(tx, key, latest);

    const [queued] = await tx
      .select()
      .from(jobs)
      .where(and(eq(jobs.datasourceId, m.datasourceId), eq(jobs.type, 'backup'), eq(jobs.state, 'queued')))
      .orderBy(jobs.createdAt)
      .limit(1);
    if (queued) {
      if (await this.promote(tx, queued, kind)) {
        report.promoted.push({ datasourceId: m.datasourceId, jobId: queued.id, kind });
        report.covered.push({ datasourceId: m.datasourceId, jobId: queued.id, kind });
        return;
      }
      if (!this.mustPromote(queued, kind)) {
        report.covered.push({ datasourceId: m.datasourceId, jobId: queued.id, kind });
        return;
      }
      // It should have become this kind but started meanwhile: the slot gets a job of its own.
    }
    const job = await createJob(tx, {
      type: 'backup',
      agentId: m.agentId,
      datasourceId: m.datasourceId,
      groupId: m.groupId,
      trigger: 'schedule',
      params: backupParamsFor(kind),
      maxRetries: SCHEDULED_RETRIES,
    });
    report.queued.push(this.run(job, m, kind, latest));
  }

  /**
   * A recovery-point (or express-full) slot falling due while a sync waits in the queue: the
   * waiting job becomes that kind, or retention would prune its point as a superseded sync.
   * Only before its first run (`attempts = 0`), and a full read asked for is never dropped.
   */
  private mustPromote(job: JobRow, kind: SlotKind): boolean {
    return backupPriority(kind) > originPriority((job.params as BackupParams).origin);
  }

  private async promote(tx: Tx, job: JobRow, kind: SlotKind): Promise<boolean> {
    if (!this.mustPromote(job, kind) || job.attempts > 0) return false;
    const wanted = backupParamsFor(kind);
    const params: BackupParams = { ...wanted, full: wanted.full || (job.params as BackupParams).full };
    const rows = await tx
      .update(jobs)
      .set({ params })
      .where(and(eq(jobs.id, job.id), eq(jobs.state, 'queued'), eq(jobs.attempts, 0)))
      .returning({ id: jobs.id });
    return rows.length === 1;
  }

  private async scheduleDailyCheck(tx: Tx, m: Member, now: Date, report: TickReport): Promise<void> {
    const check = m.disk.consistencyCheck;
    if (check.when !== 'daily') return;
    const key = markKey(m.datasourceId, 'consistency');
    const mark = await lockMark(tx, key, now);
    if (!mark) return;
    const due = slotsBetween(m.disk, mark, now, { timeZone: this.timeZone, kinds: ['consistency-check'] });
    if (due.length === 0) return;
    const start = due[due.length - 1]!.at;
    await setMark(tx, key, start);
    // The check may run from its start for maxHours; a window already over is not started late.
    const deadline = new Date(start.getTime() + check.maxHours * 3_600_000);
    if (deadline <= now) {
      report.windowMissed.push({ datasourceId: m.datasourceId, slotAt: start });
      return;
    }
    const [active] = await this.activeCheck(tx, m.datasourceId);
    if (active) {
      report.covered.push({ datasourceId: m.datasourceId, jobId: active.id, kind: 'consistency-check' });
      return;
    }
    const job = await createJob(tx, {
      type: 'consistency-check',
      agentId: m.agentId,
      datasourceId: m.datasourceId,
      groupId: m.groupId,
      trigger: 'schedule',
      params: { full: true, origin: 'consistency-check' } satisfies BackupParams,
      maxRetries: SCHEDULED_RETRIES,
      deadline,
    });
    report.queued.push(this.run(job, m, 'consistency-check', start));
  }

  /**
   * `when: needed`: an inconsistent replica gets a check (trigger `system`) unless one is queued
   * or running. One that failed is not queued again before the backoff, so a datasource that
   * cannot be checked does not turn the queue into a loop.
   */
  private async scheduleNeededCheck(tx: Tx, m: Member, now: Date, report: TickReport): Promise<void> {
    const [ds] = await tx
      .select({ replicaState: datasources.replicaState })
      .from(datasources)
      .where(eq(datasources.id, m.datasourceId));
    if (ds?.replicaState !== 'inconsistent') return;
    if ((await this.activeCheck(tx, m.datasourceId)).length > 0) return;
    const key = markKey(m.datasourceId, 'consistency-needed');
    const last = await lockMark(tx, key, now);
    // lockMark created the mark at `now` when there was none: that is this check's time too.
    if (last && now.getTime() - last.getTime() < this.neededBackoffMs) return;
    if (last) await setMark(tx, key, now);
    const job = await createJob(tx, {
      type: 'consistency-check',
      agentId: m.agentId,
      datasourceId: m.datasourceId,
      groupId: m.groupId,
      trigger: 'system',
      params: { full: true, origin: 'consistency-check' } satisfies BackupParams,
      maxRetries: SCHEDULED_RETRIES,
    });
    report.queued.push({ ...this.run(job, m, 'needed', now), trigger: 'system' });
  }

  private activeCheck(tx: Tx, datasourceId: string) {
    return tx
      .select({ id: jobs.id })
      .from(jobs)
      .where(
        and(
          eq(jobs.datasourceId, datasourceId),
          eq(jobs.type, 'consistency-check'),
          inArray(jobs.state, ACTIVE),
        ),
      )
      .limit(1);
  }

  private run(job: JobRow, m: Member, kind: ScheduledRun['kind'], slotAt: Date): ScheduledRun {
    return {
      jobId: job.id,
      type: job.type as ScheduledRun['type'],
      trigger: 'schedule',
      kind,
      agentId: m.agentId,
      datasourceId: m.datasourceId,
      groupId: m.groupId,
      slotAt,
    };
  }

  /**
   * Marks of datasources that left their group (or whose agent was revoked) are forgotten, so
   * that joining a group again starts from that moment instead of owing a catch-up backup.
   */
  private async dropStaleMarks(marks: Map<string, Date>, members: Member[]): Promise<void> {
    const current = new Set(members.map((m) => m.datasourceId));
    for (const [key, at] of marks) {
      const ds = datasourceOfMark(key);
      if (ds && !current.has(ds)) await dropMark(this.db, key, at);
    }
  }
}
