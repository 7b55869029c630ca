import { eq } from 'drizzle-orm';
import type { Logger } from 'pino';
import { backupFailed, backupSucceeded } from '../alerts/alert-events.ts';
import type { ChunkStore } from '../chunk-store/chunk-store.ts';
import type { Db } from '../db/database.ts';
import { datasources } from '../db/schema.ts';
import { collectGarbage } from '../gc/gc.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { runOnlineBackup } from '../vault/online-backup.ts';
import { runVaultCheck, runVaultRetention } from '../vault/vault-maintenance.ts';
import type { VaultService } from '../vault/vault-service.ts';
import { completeConsistencyCheck, prepareConsistencyCheck } from '../verify/consistency.ts';
import { onBackupSucceeded, recheckCorruptRecoveryPoints, verifyRecoveryPoints } from '../verify/verify.ts';
import type { JobHooks } from './job-hooks.ts';
import type { GcParams, VerifyParams } from './job-requests.ts';
import { DATASOURCE_EXCLUSIVE } from './job-queue.ts';
import type { JobRow } from './job-repo.ts';

export interface ServerJobDeps {
  db: Db;
  store: ChunkStore;
  manifests: ManifestStore;
  log: Logger;
  /** Default grace of garbage collection (--gc-grace). */
  gcGraceMs: number;
  /** The vault, for online-backup, vault-retention and vault-check jobs. */
  vault?: VaultService;
}

const holdsDatasource = (type: JobRow['type']) => DATASOURCE_EXCLUSIVE.includes(type);

/** The job runner's hooks, wired to alerts, verify, gc and the consistency check. */
export function serverJobHooks(deps: ServerJobDeps): JobHooks {
  const verifyDeps = { db: deps.db, store: deps.store, manifests: deps.manifests, log: deps.log };
  return {
    async succeeded(db, job) {
      if (!holdsDatasource(job.type) || !job.datasourceId) return;
      await backupSucceeded(db, job.datasourceId);
      await onBackupSucceeded(verifyDeps, job.datasourceId);
      // Older points damaged by a lost block are whole again once a backup stored it anew.
      await recheckCorruptRecoveryPoints(verifyDeps, { datasourceId: job.datasourceId });
    },
    async failed(db, job, error) {
      if (!holdsDatasource(job.type) || !job.datasourceId) return;
      const [ds] = await db.select().from(datasources).where(eq(datasources.id, job.datasourceId));
      if (ds) await backupFailed(db, ds, job, error);
    },
    async runServerJob(job, log) {
      if (job.type === 'verify') {
        const params = job.params as VerifyParams;
        return verifyRecoveryPoints({ ...verifyDeps, log }, { rpIds: params.rpIds });
      }
      if (job.type === 'gc') {
        const params = job.params as GcParams;
        return collectGarbage(
          { ...verifyDeps, log },
          { graceMs: params.graceMs ?? deps.gcGraceMs, dryRun: params.dryRun },
        );
      }
      if (job.type === 'online-backup') {
        if (!deps.vault) throw new Error('this server has no vault service');
        return runOnlineBackup(deps.vault, job, log);
      }
      if (job.type === 'vault-retention') {
        if (!deps.vault) throw new Error('this server has no vault service');
        return runVaultRetention(deps.vault, job, log);
      }
      if (job.type === 'vault-check') {
        if (!deps.vault) throw new Error('this server has no vault service');
        return runVaultCheck(deps.vault, job, log);
      }
      throw new Error(`${job.type} is not a server job`);
    },
    async beforeConsistencyCheck(job, log) {
      await prepareConsistencyCheck({ ...verifyDeps, log }, job.datasourceId!);
    },
    async afterConsistencyCheck(job) {
      await completeConsistencyCheck(deps.db, job.datasourceId!);
    },
  };
}
