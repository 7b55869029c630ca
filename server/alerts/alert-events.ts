import type { Db, Tx } from '../db/database.ts';
import { raiseAlert, resolveAlert } from './alerts.ts';

/*
 * Alerts raised by the parts that see an event happen (the job runner, verify), as opposed to
 * the conditions the monitor polls (monitor.ts). One function per event, so that every caller
 * raises the same kind, severity and subject, and the matching "it's fine again" resolves it.
 *
 * Subjects: `datasource:<id>`, `agent:<id>`, `store`.
 */

export const datasourceSubject = (id: string) => `datasource:${id}`;
export const agentSubject = (id: string) => `agent:${id}`;
export const STORE_SUBJECT = 'store';

type Conn = Db | Tx;
interface DatasourceRef {
  id: string;
  path: string;
}

/**
 * A backup failed for good (its retries, if any, are spent): critical, the datasource is not
 * being protected. Call it when the job reaches `failed`, not on a retried attempt.
 */
export async function backupFailed(db: Conn, ds: DatasourceRef, job: { id: string }, error: string) {
  await raiseAlert(db, {
    kind: 'backup-failed',
    severity: 'critical',
    subject: datasourceSubject(ds.id),
    message: `backup of ${ds.path} failed: ${error} (job ${job.id})`,
  });
}

/** A backup of the datasource succeeded: a standing backup-failed alert is over. */
export async function backupSucceeded(db: Conn, datasourceId: string) {
  await resolveAlert(db, 'backup-failed', datasourceSubject(datasourceId));
}

/** Verify found blocks of the datasource's recovery points damaged or missing: critical. */
export async function verifyCorruption(db: Conn, ds: DatasourceRef, detail: string) {
  await raiseAlert(db, {
    kind: 'verify-corruption',
    severity: 'critical',
    subject: datasourceSubject(ds.id),
    message: `verify found damaged data of ${ds.path}: ${detail}`,
  });
}

/** The damage is repaired (a consistency check re-sent the blocks, or the points are gone). */
export async function verifyCorruptionCleared(db: Conn, datasourceId: string) {
  await resolveAlert(db, 'verify-corruption', datasourceSubject(datasourceId));
}

/**
 * The server's copy is known to differ from the agent's data. A warning, not critical: a
 * consistency check is queued for it (`when: needed`, or the next daily one) and clears it;
 * the damage itself is the verify-corruption alert.
 */
export async function replicaInconsistent(db: Conn, ds: DatasourceRef, reason: string) {
  await raiseAlert(db, {
    kind: 'replica-inconsistent',
    severity: 'warning',
    subject: datasourceSubject(ds.id),
    message: `the copy of ${ds.path} is inconsistent until a consistency check runs: ${reason}`,
  });
}

/** A consistency check succeeded: the replica matches the agent's data again. */
export async function replicaConsistent(db: Conn, datasourceId: string) {
  await resolveAlert(db, 'replica-inconsistent', datasourceSubject(datasourceId));
}
