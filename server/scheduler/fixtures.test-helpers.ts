import { randomUUID } from 'node:crypto';
import { and, eq } from 'drizzle-orm';
import type { Db } from '../db/database.ts';
import { agents, datasources, jobs, protectionGroups } from '../db/schema.ts';
import { parsePolicy } from '../groups/policy.ts';

/*
 * Rows for scheduler and alert tests, written straight into the tables: these tests are about
 * what happens once groups exist, not about how they are made.
 */

export async function addAgent(db: Db, name = `agent-${randomUUID().slice(0, 8)}`) {
  const [row] = await db.insert(agents).values({ id: randomUUID(), name, secretHash: 'x' }).returning();
  return row!;
}

/** `disk` is the disk part of a policy as written in YAML; retentionDays defaults to 7. */
export async function addGroup(
  db: Db,
  disk: Record<string, unknown>,
  name = `group-${randomUUID().slice(0, 8)}`,
) {
  const policy = parsePolicy({ disk: { retentionDays: 7, ...disk } });
  const [row] = await db
    .insert(protectionGroups)
    .values({ id: randomUUID(), name, policy: policy as unknown as Record<string, unknown> })
    .returning();
  return row!;
}

export async function addDatasourceRow(
  db: Db,
  agentId: string,
  groupId: string | null,
  path = `/data/${randomUUID().slice(0, 8)}`,
) {
  const [row] = await db
    .insert(datasources)
    .values({ id: randomUUID(), agentId, path, kind: 'files', blockSize: 1 << 20, groupId })
    .returning();
  return row!;
}

/** One agent, one group, one member datasource. */
export async function addMember(db: Db, disk: Record<string, unknown>) {
  const agent = await addAgent(db);
  const group = await addGroup(db, disk);
  const ds = await addDatasourceRow(db, agent.id, group.id);
  return { agent, group, ds };
}

/** Simulates the job runner having run every queued job of the datasource. */
export async function finishQueued(
  db: Db,
  datasourceId: string,
  state: 'succeeded' | 'failed' = 'succeeded',
) {
  await db
    .update(jobs)
    .set({ state, finishedAt: new Date() })
    .where(and(eq(jobs.datasourceId, datasourceId), eq(jobs.state, 'queued')));
}

export async function jobsOf(db: Db, datasourceId: string) {
  return db.select().from(jobs).where(eq(jobs.datasourceId, datasourceId)).orderBy(jobs.createdAt);
}

export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;
