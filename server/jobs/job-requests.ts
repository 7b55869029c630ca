import path from 'node:path';
import { and, eq, inArray } from 'drizzle-orm';
import type { Db } from '../db/database.ts';
import { agents, jobs } from '../db/schema.ts';
import { getDatasource } from '../datasources/datasources.ts';
import { AppError, notFound } from '../errors.ts';
import { findAgentByName } from '../identity/agents.ts';
import { getRecoveryPoint } from '../recovery-points/recovery-points.ts';
import { normalizeSelectedPath } from '../restore/path-selection.ts';
import { createJob, type JobRow } from './job-repo.ts';

/** Queues a backup of a datasource. A second request while one is queued returns that one. */
export async function requestBackup(db: Db, input: { datasourceId: string; full: boolean }): Promise<JobRow> {
  const ds = await getDatasource(db, input.datasourceId);
  const [agent] = await db.select().from(agents).where(eq(agents.id, ds.agentId));
  if (agent?.revokedAt) throw new AppError('CONFLICT', `agent "${agent.name}" is revoked`);
  const [queued] = await db
    .select()
    .from(jobs)
    .where(and(eq(jobs.datasourceId, ds.id), eq(jobs.type, 'backup'), inArray(jobs.state, ['queued'])));
  if (queued) return queued;
  return createJob(db, {
    type: 'backup',
    agentId: ds.agentId,
    datasourceId: ds.id,
    params: { full: input.full },
  });
}

/** Queues a restore of a recovery point (or selected paths of it) into a folder on an agent. */
export async function requestRestore(
  db: Db,
  input: { rpId: string; target: string; agent?: string; paths: string[] },
): Promise<JobRow> {
  const rp = await getRecoveryPoint(db, input.rpId);
  const ds = await getDatasource(db, rp.datasourceId);
  let agentId = ds.agentId;
  if (input.agent) agentId = (await findAgentByName(db, input.agent)).id;
  const [agent] = await db.select().from(agents).where(eq(agents.id, agentId));
  if (!agent) throw notFound('agent');
  if (agent.revokedAt) throw new AppError('CONFLICT', `agent "${agent.name}" is revoked`);
  if (!path.isAbsolute(input.target) || input.target.includes('\0')) {
    throw new AppError(
      'INVALID_INPUT',
      `restore target must be an absolute folder on the agent, got "${input.target}"`,
    );
  }
  const paths = input.paths.map(normalizeSelectedPath);
  return createJob(db, {
    type: 'restore',
    agentId,
    datasourceId: ds.id,
    params: { rpId: rp.id, target: path.normalize(input.target), paths },
  });
}

export interface VerifyParams {
  /** Recovery points to verify; absent: every disk point. */
  rpIds?: string[];
}
export interface GcParams {
  /** Blocks touched this recently are kept (default: the server's --gc-grace). */
  graceMs?: number;
  dryRun?: boolean;
}

/** Queues a verify of some recovery points (checked to exist) or of the whole store. */
export async function requestVerify(db: Db, params: VerifyParams, trigger: JobRow['trigger'] = 'manual') {
  for (const id of params.rpIds ?? []) await getRecoveryPoint(db, id);
  return createJob(db, { type: 'verify', agentId: null, datasourceId: null, trigger, params });
}

/** Queues a garbage collection; one queued at a time is enough (one runs at a time anyway). */
export async function requestGc(db: Db, params: GcParams, trigger: JobRow['trigger'] = 'manual') {
  // A queued one will run after the running one; a third adds nothing.
  const [queued] = await db
    .select()
    .from(jobs)
    .where(and(eq(jobs.type, 'gc'), eq(jobs.state, 'queued')));
  if (queued) return queued;
  return createJob(db, { type: 'gc', agentId: null, datasourceId: null, trigger, params });
}

/** Queues a consistency check of a datasource (a full re-read compared with the newest point). */
export async function requestConsistencyCheck(
  db: Db,
  input: {
    datasourceId: string;
    trigger?: JobRow['trigger'];
    deadline?: Date | null;
    groupId?: string | null;
  },
): Promise<JobRow> {
  const ds = await getDatasource(db, input.datasourceId);
  const [queued] = await db
    .select()
    .from(jobs)
    .where(
      and(
        eq(jobs.datasourceId, ds.id),
        eq(jobs.type, 'consistency-check'),
        inArray(jobs.state, ['queued', 'running']),
      ),
    );
  if (queued) return queued;
  return createJob(db, {
    type: 'consistency-check',
    agentId: ds.agentId,
    datasourceId: ds.id,
    groupId: input.groupId ?? ds.groupId,
    trigger: input.trigger ?? 'manual',
    params: { full: true, origin: 'consistency-check' },
    deadline: input.deadline ?? null,
    maxRetries: input.trigger === 'manual' || !input.trigger ? 0 : 3,
  });
}
