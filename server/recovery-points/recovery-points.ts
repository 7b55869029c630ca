import { desc, eq } from 'drizzle-orm';
import type { Db } from '../db/database.ts';
import { recoveryPoints } from '../db/schema.ts';
import { notFound } from '../errors.ts';

export type RecoveryPointRow = typeof recoveryPoints.$inferSelect;

export async function listRecoveryPoints(db: Db, filter: { datasourceId?: string; tier?: 'disk' | 'vault' }) {
  const rows = await db
    .select()
    .from(recoveryPoints)
    .where(filter.datasourceId ? eq(recoveryPoints.datasourceId, filter.datasourceId) : undefined)
    .orderBy(desc(recoveryPoints.createdAt));
  // Soft-deleted vault points (vault retention) are gone from the catalog.
  return rows.filter((r) => (!filter.tier || r.tier === filter.tier) && !r.deletedAt).map(recoveryPointView);
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
  };
}
