import { eq } from 'drizzle-orm';
import { resolveAlert } from '../alerts/alerts.ts';
import type { Db, Tx } from '../db/database.ts';
import { datasources } from '../db/schema.ts';
import { notFound } from '../errors.ts';
import {
  type CorruptBlock,
  newestDiskPoint,
  type VerifyDeps,
  type VerifyReport,
  verifyRecoveryPoints,
} from './verify.ts';

/*
 * Consistency check (DPM's "synchronise with consistency check"): make the server's newest copy
 * of a datasource match the agent's data again after damage on either side, e.g. pack files
 * deleted or corrupted behind the server's back, or a replica marked inconsistent by verify.
 *
 *   1. prepareConsistencyCheck: verify the datasource's newest recovery point. Whatever is
 *      damaged or missing is quarantined (its index row moves to quarantined_chunks), so no
 *      ownership check finds it any more.
 *   2. The job runner then runs a full re-read backup (params { full: true, origin:
 *      'consistency-check' }) through the normal backup session: the agent reads and offers
 *      every block, and the server asks only for the blocks it no longer has. Those are stored
 *      again, which also heals every older point that named them (they become `ok` on their
 *      next verify).
 *   3. completeConsistencyCheck, once that backup succeeded: the replica is consistent.
 */

export interface ConsistencyPreparation {
  datasourceId: string;
  /** The newest disk recovery point, verified; null when the datasource has none yet. */
  rpId: string | null;
  blocksChecked: number;
  /** Damaged or missing blocks the newest point names; the backup that follows sends them again. */
  corruptBlocks: CorruptBlock[];
  /** Of those, the blocks taken out of the index now. */
  quarantined: number;
  /** The whole verify report, when there was a point to verify. */
  verify: VerifyReport | null;
}

/** Step 1: verify the newest point of the datasource, quarantining what is damaged or missing. */
export async function prepareConsistencyCheck(
  deps: VerifyDeps,
  datasourceId: string,
): Promise<ConsistencyPreparation> {
  const [ds] = await deps.db
    .select({ id: datasources.id })
    .from(datasources)
    .where(eq(datasources.id, datasourceId));
  if (!ds) throw notFound(`datasource ${datasourceId}`);
  const newest = await newestDiskPoint(deps.db, datasourceId);
  if (!newest)
    return { datasourceId, rpId: null, blocksChecked: 0, corruptBlocks: [], quarantined: 0, verify: null };
  const report = await verifyRecoveryPoints(deps, { rpIds: [newest.id] });
  deps.log.info(
    {
      datasourceId,
      rpId: newest.id,
      corruptBlocks: report.corruptBlocks.length,
      quarantined: report.quarantined,
    },
    'consistency check: newest recovery point verified',
  );
  return {
    datasourceId,
    rpId: newest.id,
    blocksChecked: report.blocksChecked,
    corruptBlocks: report.corruptBlocks,
    quarantined: report.quarantined,
    verify: report,
  };
}

/** Step 3, after the full re-read backup succeeded: the replica is consistent again. */
export async function completeConsistencyCheck(db: Db | Tx, datasourceId: string): Promise<void> {
  await db.update(datasources).set({ replicaState: 'consistent' }).where(eq(datasources.id, datasourceId));
  await resolveAlert(db, 'replica-inconsistent', `datasource:${datasourceId}`);
}
