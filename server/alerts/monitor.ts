import { statfs } from 'node:fs/promises';
import { and, eq, inArray, max } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db } from '../db/database.ts';
import { agents, alerts, recoveryPoints } from '../db/schema.ts';
import type { DiskPolicy } from '../groups/policy.ts';
import { loadMembers, type Member } from '../scheduler/members.ts';
import { localTimeZone, longestBackupGapMs } from '../scheduler/slots.ts';
import { agentSubject, datasourceSubject, STORE_SUBJECT } from './alert-events.ts';
import { type AlertKind, type AlertSeverity, raiseAlert, resolveAlert } from './alerts.ts';

/*
 * Conditions polled by the server (call check(new Date()) every minute or so): each run raises
 * an alert for every condition that holds (refreshing its message; one active alert per kind
 * and subject) and resolves the active ones whose condition no longer holds. No timers inside.
 *
 * - rpo-missed (warning, datasource:<id>): a group member's newest good recovery point on disk
 *   is older than its policy allows. Allowed = the longest gap between two consecutive backup
 *   slots (sync, recovery point or express full) over a week, plus a grace (default 1 h) for
 *   the backup itself to run. With no point yet, the datasource's creation counts.
 * - agent-unreachable (warning, agent:<id>): a non-revoked agent with a group member has not
 *   been seen (agents.lastSeenAt, refreshed while connected; its enrollment if never) for longer
 *   than a threshold (default 1 h).
 * - store-full (store): the chunk store's file system is at least 90 % used (warning) or 97 %
 *   (critical).
 */

const HOUR = 3_600_000;

export interface AlertThresholds {
  /** An agent not seen for longer than this is unreachable. Default 1 h. */
  agentUnreachableMs: number;
  /** Added to the longest gap of a schedule before its RPO counts as missed. Default 1 h. */
  rpoGraceMs: number;
  /** Store file system use, in percent, for a warning and for a critical alert. Default 90, 97. */
  storeWarningPercent: number;
  storeCriticalPercent: number;
}

export const DEFAULT_THRESHOLDS: AlertThresholds = {
  agentUnreachableMs: HOUR,
  rpoGraceMs: HOUR,
  storeWarningPercent: 90,
  storeCriticalPercent: 97,
};

export interface AlertMonitorOptions {
  db: Db;
  /** The chunk store's folder: its file system is the one that fills up. */
  storeDir: string;
  log?: Logger;
  thresholds?: Partial<AlertThresholds>;
  /** The zone policies' times are in (as the scheduler's); default the server's own. */
  timeZone?: string;
  /** Agents connected right now count as reachable whatever their lastSeenAt says. */
  isOnline?: (agentId: string) => boolean;
}

/** Conditions found holding by one check, as `kind subject`. */
export interface CheckReport {
  holding: { kind: AlertKind; subject: string; severity: AlertSeverity }[];
  resolved: { kind: AlertKind; subject: string }[];
}

export class AlertMonitor {
  readonly thresholds: AlertThresholds;
  private readonly db: Db;
  private readonly storeDir: string;
  private readonly log: Logger | undefined;
  private readonly timeZone: string;
  private readonly isOnline: (agentId: string) => boolean;
  /** Longest gap per schedule, worked out once a day (it moves only with DST). */
  private readonly gaps = new Map<string, { day: number; ms: number }>();

  constructor(opts: AlertMonitorOptions) {
    this.db = opts.db;
    this.storeDir = opts.storeDir;
    this.log = opts.log;
    this.thresholds = { ...DEFAULT_THRESHOLDS, ...opts.thresholds };
    this.timeZone = opts.timeZone ?? localTimeZone();
    this.isOnline = opts.isOnline ?? (() => false);
  }

  async check(now: Date): Promise<CheckReport> {
    const report: CheckReport = { holding: [], resolved: [] };
    const { members } = await loadMembers(this.db);
    // Each condition on its own: a failing statfs must not stop the RPO check.
    const steps: [string, () => Promise<void>][] = [
      ['rpo-missed', () => this.checkRpo(members, now, report)],
      ['agent-unreachable', () => this.checkAgents(members, now, report)],
      ['store-full', () => this.checkStore(report)],
    ];
    for (const [kind, step] of steps) {
      try {
        await step();
      } catch (err) {
        this.log?.error({ err, kind }, 'alert check failed');
      }
    }
    return report;
  }

  /** The newest recovery point may be at most this old under the policy. */
  allowedAgeMs(disk: DiskPolicy, now: Date): number {
    const key = JSON.stringify([disk.syncEvery, disk.recoveryPoints, disk.expressFull]);
    const day = Math.floor(now.getTime() / (24 * HOUR));
    let gap = this.gaps.get(key);
    if (gap?.day !== day) {
      gap = { day, ms: longestBackupGapMs(disk, now, { timeZone: this.timeZone }) };
      this.gaps.set(key, gap);
    }
    return gap.ms + this.thresholds.rpoGraceMs;
  }

  private async checkRpo(members: Member[], now: Date, report: CheckReport): Promise<void> {
    const ids = members.map((m) => m.datasourceId);
    const newest = new Map<string, Date>();
    if (ids.length > 0) {
      const rows = await this.db
        .select({ id: recoveryPoints.datasourceId, at: max(recoveryPoints.createdAt) })
        .from(recoveryPoints)
        .where(
          and(
            inArray(recoveryPoints.datasourceId, ids),
            eq(recoveryPoints.status, 'ok'),
            eq(recoveryPoints.tier, 'disk'),
          ),
        )
        .groupBy(recoveryPoints.datasourceId);
      for (const r of rows) if (r.at) newest.set(r.id, r.at);
    }
    const holding = new Set<string>();
    for (const m of members) {
      const since = newest.get(m.datasourceId);
      const age = now.getTime() - (since ?? m.createdAt).getTime();
      const allowed = this.allowedAgeMs(m.disk, now);
      if (age <= allowed) continue;
      const subject = datasourceSubject(m.datasourceId);
      holding.add(subject);
      const what = since ? `no recovery point since ${since.toISOString()}` : 'no recovery point yet';
      await this.raise(report, {
        kind: 'rpo-missed',
        severity: 'warning',
        subject,
        message: `${m.agentName}:${m.path} (group ${m.groupName}): ${what}; its schedule allows ${hours(allowed)}`,
      });
    }
    await this.resolveOthers('rpo-missed', holding, report);
  }

  private async checkAgents(members: Member[], now: Date, report: CheckReport): Promise<void> {
    const ids = [...new Set(members.map((m) => m.agentId))];
    const rows = ids.length > 0 ? await this.db.select().from(agents).where(inArray(agents.id, ids)) : [];
    const holding = new Set<string>();
    for (const a of rows) {
      if (a.revokedAt || this.isOnline(a.id)) continue;
      const seen = a.lastSeenAt ?? a.createdAt;
      if (now.getTime() - seen.getTime() <= this.thresholds.agentUnreachableMs) continue;
      const subject = agentSubject(a.id);
      holding.add(subject);
      await this.raise(report, {
        kind: 'agent-unreachable',
        severity: 'warning',
        subject,
        message: a.lastSeenAt
          ? `agent ${a.name} not seen since ${a.lastSeenAt.toISOString()}: its backups cannot run`
          : `agent ${a.name} never connected since it was enrolled: its backups cannot run`,
      });
    }
    await this.resolveOthers('agent-unreachable', holding, report);
  }

  private async checkStore(report: CheckReport): Promise<void> {
    const fs = await statfs(this.storeDir);
    // As df counts: blocks reserved for root are neither used nor available to us.
    const used = fs.blocks - fs.bfree;
    const usable = used + fs.bavail;
    const percent = usable > 0 ? (100 * used) / usable : 100;
    const { storeWarningPercent: warn, storeCriticalPercent: critical } = this.thresholds;
    if (percent < warn && percent < critical) {
      await this.resolveOthers('store-full', new Set(), report);
      return;
    }
    const free = (fs.bavail * fs.bsize) / 1024 ** 3;
    await this.raise(report, {
      kind: 'store-full',
      severity: percent >= critical ? 'critical' : 'warning',
      subject: STORE_SUBJECT,
      message: `the chunk store's file system is ${percent.toFixed(1)} % full (${free.toFixed(1)} GiB free); backups fail when it is full`,
    });
  }

  private async raise(
    report: CheckReport,
    a: { kind: AlertKind; severity: AlertSeverity; subject: string; message: string },
  ): Promise<void> {
    await raiseAlert(this.db, a);
    report.holding.push({ kind: a.kind, subject: a.subject, severity: a.severity });
  }

  /** Resolves the active alerts of a kind whose subject's condition no longer holds. */
  private async resolveOthers(kind: AlertKind, holding: Set<string>, report: CheckReport): Promise<void> {
    const active = await this.db
      .select({ subject: alerts.subject })
      .from(alerts)
      .where(and(eq(alerts.kind, kind), eq(alerts.state, 'active')));
    for (const { subject } of active) {
      if (holding.has(subject)) continue;
      if ((await resolveAlert(this.db, kind, subject)) > 0) report.resolved.push({ kind, subject });
    }
  }
}

const hours = (ms: number) => `${Math.round((10 * ms) / HOUR) / 10} h`;
