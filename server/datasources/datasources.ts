import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { and, eq } from 'drizzle-orm';
import { DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../../protocol/version.ts';
import type { Db, Tx } from '../db/database.ts';
import { agents, datasources } from '../db/schema.ts';
import { AppError, notFound } from '../errors.ts';
import { findAgentByName } from '../identity/agents.ts';

export type DatasourceRow = typeof datasources.$inferSelect;
export type DatasourceKind = DatasourceRow['kind'];

/** `db` may be a transaction: applying a groups file creates its datasources in the same one. */
export async function addDatasource(
  db: Db | Tx,
  input: {
    agent: string;
    path: string;
    kind: DatasourceKind;
    blockSize?: number;
    compress?: boolean;
    preScript?: string | null;
    postScript?: string | null;
  },
): Promise<DatasourceView> {
  const agent = await findAgentByName(db, input.agent);
  const normalized = normalizeDatasourcePath(input.path);
  const blockSize = input.blockSize ?? DEFAULT_BLOCK_SIZE[input.kind];
  if (blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
    throw new AppError(
      'INVALID_INPUT',
      `blockSize must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`,
    );
  }
  const [existing] = await db
    .select()
    .from(datasources)
    .where(and(eq(datasources.agentId, agent.id), eq(datasources.path, normalized)));
  if (existing) {
    throw new AppError(
      'CONFLICT',
      `agent "${agent.name}" already has datasource ${existing.id} for ${normalized}`,
    );
  }
  const [row] = await db
    .insert(datasources)
    .values({
      id: randomUUID(),
      agentId: agent.id,
      path: normalized,
      kind: input.kind,
      blockSize,
      compress: input.compress ?? true,
      preScript: input.preScript ?? null,
      postScript: input.postScript ?? null,
    })
    .returning();
  return datasourceView(row!, agent.name);
}

/**
 * The one spelling of a datasource path ("/srv/data/" and "/srv//data" are "/srv/data"), so that
 * (agent, path) names one datasource whichever way it was written.
 */
export function normalizeDatasourcePath(p: string): string {
  if (!path.isAbsolute(p) || p.includes('\0')) {
    throw new AppError(
      'INVALID_INPUT',
      `datasource path must be absolute on the agent's machine, got "${p}"`,
    );
  }
  return path.posix.normalize(p).replace(/(.)\/$/, '$1');
}

export async function getDatasource(db: Db, id: string): Promise<DatasourceRow> {
  const [row] = await db.select().from(datasources).where(eq(datasources.id, id));
  if (!row) throw notFound(`datasource ${id}`);
  return row;
}

export async function listDatasources(db: Db): Promise<DatasourceView[]> {
  const rows = await db
    .select({ ds: datasources, agent: agents.name })
    .from(datasources)
    .innerJoin(agents, eq(agents.id, datasources.agentId))
    .orderBy(datasources.createdAt);
  return rows.map((r) => datasourceView(r.ds, r.agent));
}

export function datasourceView(ds: DatasourceRow, agentName: string) {
  return {
    id: ds.id,
    agent: agentName,
    agentId: ds.agentId,
    path: ds.path,
    kind: ds.kind,
    blockSize: ds.blockSize,
    compress: ds.compress,
    preScript: ds.preScript,
    postScript: ds.postScript,
    createdAt: ds.createdAt.toISOString(),
  };
}
export type DatasourceView = ReturnType<typeof datasourceView>;
