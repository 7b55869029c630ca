import { desc, eq } from 'drizzle-orm';
import type { Db } from '../db/database.ts';
import { recoveryPoints } from '../db/schema.ts';
import { notFound } from '../errors.ts';

export type RecoveryPointRow = typeof recoveryPoints.$inferSelect;

/** How long a soft-deleted vault point stays restorable (server/vault/maintenance/soft-delete.ts). */
const SOFT_DELETE_WINDOW_MS = 14 * 24 * 60 * 60_000;

export async function listRecoveryPoints(
  db: Db,
  filter: { datasourceId?: string; tier?: 'disk' | 'vault'; deleted?: boolean },
) {
  const rows = await db
    .select()
    .from(recoveryPoints)
    .where(filter.datasourceId ? eq(recoveryPoints.datasourceId, filter.datasourceId) : undefined)
    .orderBy(desc(recoveryPoints.createdAt));
  // Soft-deleted vault points (rp delete, vault retention) are hidden, or the only ones listed
  // with `deleted`: they stay restorable until purged.
  return rows
    .filter(
      (r) => (!filter.tier || r.tier === filter.tier) && Boolean(r.deletedAt) === Boolean(filter.deleted),
    )
    .map(recoveryPointView);
}

export async function getRecoveryPoint(db: Db, id: string): Promise<RecoveryPointRow> {
  const [rp] = await db.select().from(recoveryPoints).where(eq(recoveryPoints.id, id));
  if (!rp) throw notFound(`recovery point ${id}`);
  return rp;
}

export function recoveryPointView(rp: RecoveryPointRow) {
  return {
    id: rp.id,
    datasourceId: rp.datasourceId,
    jobId: rp.jobId,
    createdAt: rp.createdAt.toISOString(),
    tier: rp.tier,
    kind: rp.kind,
    origin: rp.origin,
    status: rp.status,
    verifiedAt: rp.verifiedAt?.toISOString() ?? null,
    consistency: rp.consistency,
    bytes: rp.bytes,
    files: rp.files,
    blocks: rp.blocks,
    snapshotId: rp.snapshotId,
    sourceRpId: rp.sourceRpId,
    groupName: rp.groupName,
    deletedAt: rp.deletedAt?.toISOString() ?? null,
    purgeAfter: rp.deletedAt ? new Date(rp.deletedAt.getTime() + SOFT_DELETE_WINDOW_MS).toISOString() : null,
  };
}
