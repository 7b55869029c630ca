import { and, eq, inArray, isNotNull } from 'drizzle-orm';
import type { Db } from '../db/database.ts';
import { datasources, protectionGroups, recoveryPoints } from '../db/schema.ts';
import type { DiskPolicy } from '../groups/policy.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { deleteRecoveryPointRows, type PrunedPoint, removeManifests } from './prune-points.ts';
import { lockGroups, readPolicy } from '../groups/group-rows.ts';

/*
 * Short-term (disk) retention, after DPM's rules for file datasources:
 *
 * - A recovery point older than the group's `retentionDays` (counted as that many 24-hour
 *   periods before now) is pruned.
 * - A `sync` point is a transient update of the replica: it is pruned as soon as the datasource
 *   has a newer successful (status `ok`) point. Points made at recovery-point times, express
 *   fulls, consistency checks and manual backups live for the whole retention range.
 * - The newest successful point of a datasource is never pruned, however old: a datasource whose
 *   backups keep failing (or whose agent is gone) keeps its last good copy until an
 *   administrator deletes it.
 *
 * The plan is computed from the policy in force at each run, so a changed `retentionDays`
 * applies retroactively: longer keeps what is still there, shorter prunes at once. Only disk
 * points of datasources in a group are ever pruned; vault points have their own retention.
 */

export interface PrunablePoint {
  id: string;
  createdAt: Date;
  origin: (typeof recoveryPoints.$inferSelect)['origin'];
  status: (typeof recoveryPoints.$inferSelect)['status'];
}

const DAY_MS = 24 * 60 * 60 * 1000;

/** Ids of the points of ONE datasource that the policy no longer keeps at `now`. */
export function planPrune(
  disk: Pick<DiskPolicy, 'retentionDays'>,
  points: readonly PrunablePoint[],
  now: Date,
): string[] {
  const cutoff = now.getTime() - disk.retentionDays * DAY_MS;
  // Newest first; equal times ordered by id so that the answer never depends on input order.
  const newestFirst = [...points].sort(
    (a, b) => b.createdAt.getTime() - a.createdAt.getTime() || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0),
  );
  const newestOk = newestFirst.find((p) => p.status === 'ok');
  const prune: string[] = [];
  let newerOkSeen = false;
  for (const p of newestFirst) {
    if (p === newestOk) {
      newerOkSeen = true;
      continue;
    }
    const expired = p.createdAt.getTime() < cutoff;
    const superseded = p.origin === 'sync' && newerOkSeen;
    if (expired || superseded) prune.push(p.id);
    if (p.status === 'ok') newerOkSeen = true;
  }
  return prune;
}

export interface RetentionReport {
  pruned: PrunedPoint[];
  /** Manifests that could not be removed after their rows were; GC removes them later. */
  manifestErrors: { rpId: string; error: string }[];
}

/**
 * Prunes the disk points of every group member per planPrune. It holds the groups lock (no
 * policy or membership changes meanwhile), and reads the points with FOR UPDATE and deletes
 * them in the same transaction, so a point verify marks corrupt meanwhile cannot make us
 * delete the last good one. Manifests go after the commit: a manifest without
 * a row is harmless, a row without its manifest would be a broken recovery point.
 */
export async function applyRetention(
  deps: { db: Db; manifests: ManifestStore },
  now: Date = new Date(),
): Promise<RetentionReport> {
  const pruned = await deps.db.transaction(async (tx) => {
    // After any group change in progress: the policy read here is the one in force.
    await lockGroups(tx);
    const groups = await tx.select().from(protectionGroups);
    const retentionOf = new Map(groups.map((g) => [g.id, readPolicy(g).disk]));
    const rows = await tx
      .select({
        id: recoveryPoints.id,
        datasourceId: recoveryPoints.datasourceId,
        createdAt: recoveryPoints.createdAt,
        origin: recoveryPoints.origin,
        status: recoveryPoints.status,
        groupId: datasources.groupId,
      })
      .from(recoveryPoints)
      .innerJoin(datasources, eq(datasources.id, recoveryPoints.datasourceId))
      .where(and(eq(recoveryPoints.tier, 'disk'), isNotNull(datasources.groupId)))
      .for('update', { of: recoveryPoints });
    const byDatasource = new Map<string, typeof rows>();
    for (const r of rows) {
      const list = byDatasource.get(r.datasourceId) ?? [];
      list.push(r);
      byDatasource.set(r.datasourceId, list);
    }
    const out: PrunedPoint[] = [];
    for (const points of byDatasource.values()) {
      const disk = retentionOf.get(points[0]!.groupId!);
      if (!disk) continue;
      const ids = new Set(planPrune(disk, points, now));
      for (const p of points)
        if (ids.has(p.id))
          out.push({ rpId: p.id, datasourceId: p.datasourceId, createdAt: p.createdAt.toISOString() });
    }
    await deleteRecoveryPointRows(
      tx,
      out.map((p) => p.rpId),
    );
    return out;
  });
  const manifestErrors = await removeManifests(
    deps.manifests,
    pruned.map((p) => p.rpId),
  );
  return { pruned, manifestErrors };
}

/** Disk points of some datasources, for planning (oldest first). */
export async function diskPointsOf(db: Db, datasourceIds: string[]) {
  if (datasourceIds.length === 0) return [];
  return db
    .select({
      id: recoveryPoints.id,
      datasourceId: recoveryPoints.datasourceId,
      createdAt: recoveryPoints.createdAt,
      origin: recoveryPoints.origin,
      status: recoveryPoints.status,
    })
    .from(recoveryPoints)
    .where(and(eq(recoveryPoints.tier, 'disk'), inArray(recoveryPoints.datasourceId, datasourceIds)))
    .orderBy(recoveryPoints.createdAt);
}
