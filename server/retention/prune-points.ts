import { inArray } from 'drizzle-orm';
import type { Db, Tx } from '../db/database.ts';
import { recoveryPoints } from '../db/schema.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';

/** A recovery point that retention, a policy change or a group deletion removed. */
export interface PrunedPoint {
  rpId: string;
  datasourceId: string;
  /** ISO time the point was made. */
  createdAt: string;
}

/** Deletes recovery point rows; callers run it inside the transaction that decided it. */
export async function deleteRecoveryPointRows(tx: Db | Tx, ids: string[]): Promise<void> {
  // Batches keep the statement's parameter count bounded for datasources with many points.
  for (let i = 0; i < ids.length; i += 1000) {
    await tx.delete(recoveryPoints).where(inArray(recoveryPoints.id, ids.slice(i, i + 1000)));
  }
}

/**
 * Removes the manifests of points whose rows are already gone (committed). A failure is reported,
 * not thrown: the rows are deleted, so the points no longer exist, and GC removes orphan
 * manifests later.
 */
export async function removeManifests(
  manifests: ManifestStore,
  ids: string[],
): Promise<{ rpId: string; error: string }[]> {
  const errors: { rpId: string; error: string }[] = [];
  for (const rpId of ids) {
    try {
      await manifests.remove(rpId);
    } catch (err) {
      errors.push({ rpId, error: (err as Error).message });
    }
  }
  return errors;
}
