import { and, eq, inArray, isNotNull, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Db, Tx } from '../db/database.ts';
import { jobs, protectionGroups, recoveryPoints, vaults } from '../db/schema.ts';
import { AppError } from '../errors.ts';
import { readPolicy } from '../groups/group-rows.ts';
import { createJob, type JobRow } from '../jobs/job-repo.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { getRecoveryPoint } from '../recovery-points/recovery-points.ts';
import { deleteRecoveryPointRows, removeManifests } from '../retention/prune-points.ts';
import { LOCK_REFRESH_MS } from './format/locks.ts';
import type { VaultRepository } from './format/repository.ts';
import { parseHoldfastTags, type Snapshot } from './format/snapshot.ts';
import {
  checkVault,
  DEFAULT_SOFT_DELETE_WINDOW_MS,
  planRetention,
  type PruneResult,
  pruneVault,
  purge,
  type RetentionPolicy,
  softDelete,
  softDeletedAt,
  undelete,
} from './maintenance/index.ts';
import { asAppError, type VaultService } from './vault-service.ts';

/*
 * Vault maintenance as jobs and catalog operations (docs/vault.md, "Retention, soft delete,
 * purge, prune and check"):
 *
 * - 'vault-retention' (server job): under one exclusive vault lock, brings the catalog in line
 *   with the vault's snapshots, soft-deletes what each group's `online.retention` no longer
 *   keeps, purges soft-deleted points past their 14-day window (and points named in the job),
 *   prunes, and brings the mirror in line before the lock is released, so an online backup
 *   (shared lock) never sees a mirror listing blobs the prune removed.
 * - 'vault-check' (server job): checkVault, with the affected snapshots mapped to recovery points.
 * - soft delete / undelete of one vault point (the API, at once, under a shared lock), and the
 *   deletion of a disk point.
 *
 * The vault is the source of truth for soft deletion (a `holdfast-deleted:` tag on the snapshot);
 * recovery_points.deleted_at and snapshot_id follow it.
 */

export interface VaultRetentionParams {
  /** Plan and report only: nothing is soft-deleted, purged or pruned. */
  dryRun?: boolean;
  /** Apply the groups' retention and purge expired soft deletes (default true). */
  retention?: boolean;
  /** Vault recovery points to purge now (holdfast rp purge). */
  purgeRpIds?: string[];
}

export interface VaultCheckParams {
  readData?: boolean;
}

export interface PointRef {
  rpId: string | null;
  snapshotId: string;
  datasourceId: string | null;
  time: string;
  group: string | null;
}

/** A prune's counts, without the lists the mirror update needs. */
export type PruneSummary = Omit<
  PruneResult,
  'removedPacks' | 'removedBlobs' | 'newPacks' | 'missingPacksDropped' | 'supersededIndexes' | 'newIndexes'
>;

export interface VaultRetentionReport {
  dryRun: boolean;
  snapshots: number;
  /** The online retention applied, per group name. */
  policies: Record<string, RetentionPolicy>;
  /** Snapshots kept because no retention applies to them (no group, a deleted group, no online.retention, not Holdfast's). */
  keptWithoutPolicy: number;
  kept: number;
  /** Soft-deleted by retention in this run (dry run: would be). */
  softDeleted: PointRef[];
  /** Removed for good in this run (dry run: would be): expired soft deletes and points asked for. */
  purged: (PointRef & { reason: 'expired' | 'requested' })[];
  /** Soft-deleted points still within their window. */
  awaitingPurge: { rpId: string | null; snapshotId: string; deletedAt: string; purgeAfter: string }[];
  /** Recovery points asked for that are not (or no longer) in the vault. */
  notFound: string[];
  catalog: { updated: number; removed: string[] };
  /** Dry run: what a prune would free now, before the purges above. */
  prune: PruneSummary;
  mirror: { rebuilt: boolean; packs: number; blobs: number; unindexedDropped: number } | null;
}

const RETENTION_RETRIES = 3;

/** Queues a vault retention (+ purge + prune) job. A system run joins one already queued. */
export async function requestVaultRetention(
  db: Db | Tx,
  params: VaultRetentionParams,
  trigger: JobRow['trigger'] = 'manual',
): Promise<JobRow> {
  if (trigger !== 'manual') {
    const [queued] = await db
      .select()
      .from(jobs)
      .where(and(eq(jobs.type, 'vault-retention'), eq(jobs.state, 'queued')));
    if (queued) return queued;
  }
  return createJob(db, {
    type: 'vault-retention',
    agentId: null,
    datasourceId: null,
    trigger,
    params,
    maxRetries: trigger === 'manual' ? 0 : RETENTION_RETRIES,
  });
}

export async function requestVaultCheck(db: Db | Tx, params: VaultCheckParams): Promise<JobRow> {
  return createJob(db, { type: 'vault-check', agentId: null, datasourceId: null, params });
}

function pointRef(id: string, s: Snapshot): PointRef {
  const t = parseHoldfastTags(s.tags);
  return {
    rpId: t?.recoveryPointId ?? null,
    snapshotId: id,
    datasourceId: t?.datasourceId ?? null,
    time: s.time,
    group: t?.group ?? null,
  };
}

function summarize(p: PruneResult): PruneSummary {
  const {
    removedPacks,
    removedBlobs,
    newPacks,
    missingPacksDropped,
    supersededIndexes,
    newIndexes,
    ...counts
  } = p;
  return counts;
}

/** Each group's online.retention, by group name (groups without one are absent). */
async function groupPolicies(db: Db, log: Logger): Promise<Map<string, RetentionPolicy>> {
  const out = new Map<string, RetentionPolicy>();
  for (const g of await db.select().from(protectionGroups)) {
    try {
      const r = readPolicy(g).online.retention;
      if (r) out.set(g.name, r);
    } catch (err) {
      log.warn(
        { group: g.name, err: (err as Error).message },
        'vault retention: group policy unreadable; its points are kept',
      );
    }
  }
  return out;
}

/**
 * Makes recovery_points follow the vault: each vault point's snapshot id (a soft delete or
 * undelete rewrites the snapshot file) and deleted_at; rows whose snapshot is gone (purged,
 * or forgotten with restic) are removed. Run under an exclusive lock (no online backup adds a
 * point meanwhile).
 */
async function syncCatalog(
  db: Db,
  snapshots: { id: string; snapshot: Snapshot }[],
  log: Logger,
): Promise<{ updated: number; removed: string[] }> {
  const byId = new Map(snapshots.map((s) => [s.id, s]));
  const byRp = new Map<string, { id: string; snapshot: Snapshot }>();
  for (const s of snapshots) {
    const rp = parseHoldfastTags(s.snapshot.tags)?.recoveryPointId;
    if (rp) byRp.set(rp, s);
  }
  const rows = await db.select().from(recoveryPoints).where(eq(recoveryPoints.tier, 'vault'));
  let updated = 0;
  const removed: string[] = [];
  for (const row of rows) {
    const s = (row.snapshotId ? byId.get(row.snapshotId) : undefined) ?? byRp.get(row.id);
    if (!s) {
      removed.push(row.id);
      continue;
    }
    const deletedAt = softDeletedAt(s.snapshot.tags) ?? null;
    if (row.snapshotId !== s.id || (row.deletedAt?.getTime() ?? null) !== (deletedAt?.getTime() ?? null)) {
      await db
        .update(recoveryPoints)
        .set({ snapshotId: s.id, deletedAt })
        .where(eq(recoveryPoints.id, row.id));
      updated += 1;
    }
  }
  if (removed.length > 0) {
    await deleteRecoveryPointRows(db, removed);
    log.warn(
      { removed },
      'vault recovery points whose snapshot is no longer in the vault were removed from the catalog',
    );
  }
  return { updated, removed };
}

export async function runVaultRetention(
  vault: VaultService,
  job: JobRow,
  log: Logger,
): Promise<VaultRetentionReport> {
  const { db } = vault.deps;
  const params = (job.params ?? {}) as VaultRetentionParams;
  const dryRun = Boolean(params.dryRun);
  const applyRetention = params.retention !== false;
  const repo = await vault.repo();
  const now = new Date();
  const lock = await repo.lock({ exclusive: !dryRun, autoRefreshMs: LOCK_REFRESH_MS });
  try {
    const snapshots = await repo.listSnapshots();
    const catalog = dryRun ? { updated: 0, removed: [] } : await syncCatalog(db, snapshots, log);
    const policies = await groupPolicies(db, log);
    const plan = planRetention(
      snapshots.map((s) => ({ id: s.id, time: s.snapshot.time, tags: s.snapshot.tags ?? [] })),
      ({ group }) => (group === undefined ? undefined : policies.get(group)),
      { now },
    );
    const byId = new Map(snapshots.map((s) => [s.id, s.snapshot]));
    const usedPolicies: Record<string, RetentionPolicy> = {};
    let keptWithoutPolicy = 0;
    for (const k of plan.keep) {
      const group = parseHoldfastTags(byId.get(k.id)?.tags)?.group;
      const policy = group === undefined ? undefined : policies.get(group);
      if (policy && group !== undefined) usedPolicies[group] = policy;
      else keptWithoutPolicy += 1;
    }

    // 1. soft delete what retention no longer keeps
    const softDeleted: PointRef[] = [];
    if (applyRetention && plan.forget.length > 0) {
      const ids = plan.forget.map((f) => f.id);
      if (dryRun) for (const id of ids) softDeleted.push(pointRef(id, byId.get(id)!));
      else {
        const res = await softDelete(repo, ids, now, { lock });
        for (const r of res.rewritten) {
          softDeleted.push({ ...pointRef(r.oldId, byId.get(r.oldId)!), snapshotId: r.newId });
          await db
            .update(recoveryPoints)
            .set({ deletedAt: now, snapshotId: r.newId })
            .where(and(eq(recoveryPoints.tier, 'vault'), eq(recoveryPoints.snapshotId, r.oldId)));
        }
      }
    }

    // 2. purge expired soft deletes and the points asked for
    const toPurge = new Map<string, 'expired' | 'requested'>();
    if (applyRetention) for (const e of plan.softDeleted) if (e.expired) toPurge.set(e.id, 'expired');
    const notFoundIds: string[] = [];
    for (const rpId of params.purgeRpIds ?? []) {
      const [row] = await db
        .select({ snapshotId: recoveryPoints.snapshotId })
        .from(recoveryPoints)
        .where(and(eq(recoveryPoints.id, rpId), eq(recoveryPoints.tier, 'vault')));
      const snap =
        (row?.snapshotId && byId.has(row.snapshotId) ? row.snapshotId : undefined) ??
        snapshots.find((s) => parseHoldfastTags(s.snapshot.tags)?.recoveryPointId === rpId)?.id;
      if (snap) toPurge.set(snap, 'requested');
      else notFoundIds.push(rpId);
    }
    const purged: VaultRetentionReport['purged'] = [];
    if (toPurge.size > 0) {
      if (dryRun) for (const [id, reason] of toPurge) purged.push({ ...pointRef(id, byId.get(id)!), reason });
      else {
        const res = await purge(repo, [...toPurge.keys()], { lock });
        for (const r of res.removed) {
          const snap = byId.get(r.id);
          if (snap) purged.push({ ...pointRef(r.id, snap), reason: toPurge.get(r.id)! });
          await db
            .delete(recoveryPoints)
            .where(and(eq(recoveryPoints.tier, 'vault'), eq(recoveryPoints.snapshotId, r.id)));
          if (r.recoveryPointId)
            await db
              .delete(recoveryPoints)
              .where(and(eq(recoveryPoints.tier, 'vault'), eq(recoveryPoints.id, r.recoveryPointId)));
        }
      }
    }
    const purgedIds = new Set(toPurge.keys());
    const awaitingPurge = plan.softDeleted
      .filter((e) => !purgedIds.has(e.id))
      .map((e) => ({
        rpId: e.recoveryPointId ?? null,
        snapshotId: e.id,
        deletedAt: e.deletedAt.toISOString(),
        purgeAfter: e.purgeAfter.toISOString(),
      }));
    for (const s of softDeleted)
      awaitingPurge.push({
        rpId: s.rpId,
        snapshotId: s.snapshotId,
        deletedAt: now.toISOString(),
        purgeAfter: new Date(now.getTime() + DEFAULT_SOFT_DELETE_WINDOW_MS).toISOString(),
      });

    // 3. prune, then the mirror, both before the exclusive lock goes
    const pruned = await pruneVault(repo, { lock, dryRun });
    const mirror = dryRun ? null : await vault.syncMirror(repo, { force: true, dropMissingUnindexed: true });
    const report: VaultRetentionReport = {
      dryRun,
      snapshots: byId.size,
      policies: usedPolicies,
      keptWithoutPolicy,
      kept: plan.keep.length,
      softDeleted,
      purged,
      awaitingPurge,
      notFound: notFoundIds,
      catalog,
      prune: summarize(pruned),
      mirror: mirror && {
        rebuilt: mirror.rebuilt,
        packs: mirror.packs,
        blobs: mirror.blobs,
        unindexedDropped: mirror.unindexedDropped,
      },
    };
    log.info(
      {
        dryRun,
        softDeleted: softDeleted.length,
        purged: purged.length,
        bytesFreed: pruned.bytesFreed,
        packsDeleted: pruned.packsDeleted,
        packsRewritten: pruned.packsRewritten,
      },
      'vault retention and prune done',
    );
    return report;
  } finally {
    await lock.release().catch((err) => log.warn({ err }, 'cannot release the vault lock'));
  }
}

export interface AffectedRecoveryPoint {
  /** The catalog's recovery point, or the snapshot's rp: tag when the catalog does not know it. */
  rpId: string | null;
  inCatalog: boolean;
  snapshotId: string;
  datasourceId: string | null;
  group: string | null;
  hostname: string | null;
  paths: string[];
  time: string;
  softDeleted: boolean;
}

export interface VaultCheckJobReport {
  ok: boolean;
  readData: boolean;
  errors: {
    kind: string;
    message: string;
    packId: string | null;
    blobs: number;
    recoveryPointIds: (string | null)[];
  }[];
  warnings: string[];
  affectedRecoveryPoints: AffectedRecoveryPoint[];
  stats: Record<string, number>;
}

export async function runVaultCheck(
  vault: VaultService,
  job: JobRow,
  log: Logger,
): Promise<VaultCheckJobReport> {
  const { db } = vault.deps;
  const params = (job.params ?? {}) as VaultCheckParams;
  const repo = await vault.repo();
  const report = await checkVault(repo, { readData: Boolean(params.readData) });
  const rows = await db
    .select({ id: recoveryPoints.id, snapshotId: recoveryPoints.snapshotId })
    .from(recoveryPoints)
    .where(and(eq(recoveryPoints.tier, 'vault'), isNotNull(recoveryPoints.snapshotId)));
  const bySnapshot = new Map(rows.map((r) => [r.snapshotId!, r.id]));
  const ids = new Set(rows.map((r) => r.id));
  const rpOf = (a: { snapshotId: string; recoveryPointId?: string }) =>
    bySnapshot.get(a.snapshotId) ?? a.recoveryPointId ?? null;
  const affected: AffectedRecoveryPoint[] = report.affectedSnapshots.map((a) => {
    const rpId = rpOf(a);
    return {
      rpId,
      inCatalog: rpId !== null && ids.has(rpId),
      snapshotId: a.snapshotId,
      datasourceId: a.datasourceId ?? null,
      group: a.group ?? null,
      hostname: a.hostname ?? null,
      paths: a.paths,
      time: a.time,
      softDeleted: a.softDeleted,
    };
  });
  if (!report.ok)
    log.warn(
      { errors: report.errors.length, affected: affected.map((a) => a.rpId ?? a.snapshotId) },
      'vault check found errors',
    );
  return {
    ok: report.ok,
    readData: Boolean(params.readData),
    errors: report.errors.map((e) => ({
      kind: e.kind,
      message: e.message,
      packId: e.packId ?? null,
      blobs: e.blobs?.length ?? 0,
      recoveryPointIds: e.affectedSnapshots.map(rpOf),
    })),
    warnings: report.warnings,
    affectedRecoveryPoints: affected,
    stats: report.stats,
  };
}

/** The snapshot of a vault point: the catalog's, or the one tagged with its id. */
async function snapshotOf(
  repo: VaultRepository,
  rp: { id: string; snapshotId: string | null },
): Promise<string> {
  const all = await repo.listSnapshots();
  if (rp.snapshotId && all.some((s) => s.id === rp.snapshotId)) return rp.snapshotId;
  const tagged = all.find((s) => parseHoldfastTags(s.snapshot.tags)?.recoveryPointId === rp.id);
  if (!tagged) throw new AppError('CONFLICT', `recovery point ${rp.id} is no longer in the vault`);
  return tagged.id;
}

export interface DeleteOutcome {
  id: string;
  tier: 'disk' | 'vault';
  /** soft: a vault point, restorable until purgeAfter; deleted: gone now. */
  outcome: 'soft-deleted' | 'already-deleted' | 'deleted';
  deletedAt: string | null;
  purgeAfter: string | null;
}

/** A restore of this point is queued or running: deleting it now would break it. */
async function refuseWhileRestoring(db: Db, rpId: string): Promise<void> {
  const [busy] = await db
    .select({ id: jobs.id })
    .from(jobs)
    .where(
      and(
        eq(jobs.type, 'restore'),
        inArray(jobs.state, ['queued', 'running']),
        sql`${jobs.params}->>'rpId' = ${rpId}`,
      ),
    )
    .limit(1);
  if (busy) throw new AppError('CONFLICT', `recovery point ${rpId} is being restored (job ${busy.id})`);
}

/**
 * `rp delete`: a vault point is soft-deleted (its snapshot tagged in the vault, restorable for
 * 14 days, then purged by vault retention); a disk point is deleted at once (row, then manifest;
 * gc frees its blocks).
 */
export async function deleteRecoveryPoint(
  deps: { db: Db; manifests: ManifestStore; vault?: VaultService },
  rpId: string,
): Promise<DeleteOutcome> {
  const { db } = deps;
  const rp = await getRecoveryPoint(db, rpId);
  if (rp.tier === 'disk') {
    await refuseWhileRestoring(db, rp.id);
    await deleteRecoveryPointRows(db, [rp.id]);
    const errors = await removeManifests(deps.manifests, [rp.id]);
    if (errors.length > 0)
      vaultLog(deps)?.warn({ errors }, 'recovery point deleted; its manifest stays until gc');
    return {
      id: rp.id,
      tier: 'disk',
      outcome: 'deleted',
      deletedAt: new Date().toISOString(),
      purgeAfter: null,
    };
  }
  const vault = need(deps.vault);
  const window = (d: Date) => new Date(d.getTime() + DEFAULT_SOFT_DELETE_WINDOW_MS).toISOString();
  if (rp.deletedAt)
    return {
      id: rp.id,
      tier: 'vault',
      outcome: 'already-deleted',
      deletedAt: rp.deletedAt.toISOString(),
      purgeAfter: window(rp.deletedAt),
    };
  const repo = await vault.repo();
  const now = new Date();
  try {
    const snapshotId = await snapshotOf(repo, rp);
    const res = await softDelete(repo, [snapshotId], now);
    let deletedAt = now;
    let newId = res.rewritten[0]?.newId ?? snapshotId;
    if (!res.rewritten[0]) {
      // already marked in the vault (by an earlier run that did not reach the catalog)
      deletedAt = softDeletedAt((await repo.loadSnapshot(snapshotId)).tags) ?? now;
      newId = snapshotId;
    }
    await db.update(recoveryPoints).set({ deletedAt, snapshotId: newId }).where(eq(recoveryPoints.id, rp.id));
    return {
      id: rp.id,
      tier: 'vault',
      outcome: 'soft-deleted',
      deletedAt: deletedAt.toISOString(),
      purgeAfter: window(deletedAt),
    };
  } catch (err) {
    throw asAppError(err);
  }
}

/** `rp undelete`: a soft-deleted vault point is live again. */
export async function undeleteRecoveryPoint(deps: { db: Db; vault?: VaultService }, rpId: string) {
  const { db } = deps;
  const rp = await getRecoveryPoint(db, rpId);
  if (rp.tier !== 'vault')
    throw new AppError(
      'INVALID_INPUT',
      `recovery point ${rp.id} is a disk point: disk points are deleted at once`,
    );
  const repo = await need(deps.vault).repo();
  try {
    const snapshotId = await snapshotOf(repo, rp);
    const res = await undelete(repo, [snapshotId]);
    const newId = res.rewritten[0]?.newId ?? snapshotId;
    await db
      .update(recoveryPoints)
      .set({ deletedAt: null, snapshotId: newId })
      .where(eq(recoveryPoints.id, rp.id));
    return { id: rp.id, tier: 'vault' as const, outcome: res.rewritten[0] ? 'undeleted' : 'not-deleted' };
  } catch (err) {
    throw asAppError(err);
  }
}

/**
 * `rp purge`: a vault point is removed for good by a vault-retention job (purge, then prune,
 * retention itself not applied); a disk point is deleted at once.
 */
export async function requestPurge(
  deps: { db: Db; manifests: ManifestStore; vault?: VaultService },
  rpId: string,
): Promise<{ job: JobRow } | { deleted: DeleteOutcome }> {
  const rp = await getRecoveryPoint(deps.db, rpId);
  if (rp.tier === 'disk') return { deleted: await deleteRecoveryPoint(deps, rpId) };
  need(deps.vault);
  await refuseWhileRestoring(deps.db, rp.id);
  return { job: await requestVaultRetention(deps.db, { retention: false, purgeRpIds: [rp.id] }, 'manual') };
}

function need(vault: VaultService | undefined): VaultService {
  if (!vault) throw new AppError('CONFLICT', 'this server has no vault service');
  return vault;
}

function vaultLog(deps: { vault?: VaultService }): Logger | undefined {
  return deps.vault?.deps.log;
}

/** Whether a vault is configured (upkeep queues vault retention only then). */
export async function vaultConfigured(db: Db): Promise<boolean> {
  return (await db.select({ id: vaults.id }).from(vaults).limit(1)).length > 0;
}
