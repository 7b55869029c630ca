import { eq, sql } from 'drizzle-orm';
import type { Db, Tx } from '../db/database.ts';
import { agents, datasources, protectionGroups } from '../db/schema.ts';
import { AppError, notFound } from '../errors.ts';
import type { MemberKind } from './group-spec.ts';
import { type GroupPolicy, groupPolicySchema, formatIssues } from './policy.ts';

export type GroupRow = typeof protectionGroups.$inferSelect;
export type DatasourceRow = typeof datasources.$inferSelect;

/**
 * The stored policy, parsed again: jsonb does not keep key order, and defaults added since it
 * was stored fill in, so a policy read back compares equal to the same policy parsed from YAML.
 */
export function readPolicy(row: GroupRow): GroupPolicy {
  const r = groupPolicySchema.safeParse(row.policy);
  if (!r.success)
    throw new AppError(
      'INTERNAL',
      `group "${row.name}" has a stored policy that is not valid: ${formatIssues(r.error)}`,
    );
  return r.data;
}

/** What `group show --json` returns: the keys of a YAML entry, plus each member's datasource id. */
export interface GroupView {
  name: string;
  members: { agent: string; path: string; kind: MemberKind; datasourceId: string }[];
  disk: GroupPolicy['disk'];
  online: GroupPolicy['online'];
}

export interface GroupState {
  row: GroupRow;
  policy: GroupPolicy;
  members: DatasourceRow[];
}

/** Everything a plan is made from: groups, agents and datasources, read in the caller's transaction. */
export interface CurrentState {
  groups: Map<string, GroupState>;
  groupsById: Map<string, GroupState>;
  agentsByName: Map<string, { id: string; name: string }>;
  agentNames: Map<string, string>;
  /** Keyed by datasourceKey(agentId, path). */
  datasources: Map<string, DatasourceRow>;
}

export const datasourceKey = (agentId: string, path: string) => `${agentId}\0${path}`;

export async function loadState(db: Db | Tx): Promise<CurrentState> {
  // One after another: inside a transaction they share one connection.
  const groupRows = await db.select().from(protectionGroups);
  const agentRows = await db.select({ id: agents.id, name: agents.name }).from(agents);
  const dsRows = await db.select().from(datasources);
  const groups = new Map<string, GroupState>();
  const groupsById = new Map<string, GroupState>();
  for (const row of groupRows) {
    const g = { row, policy: readPolicy(row), members: [] };
    groups.set(row.name, g);
    groupsById.set(row.id, g);
  }
  for (const ds of dsRows) if (ds.groupId) groupsById.get(ds.groupId)?.members.push(ds);
  return {
    groups,
    groupsById,
    agentsByName: new Map(agentRows.map((a) => [a.name, a])),
    agentNames: new Map(agentRows.map((a) => [a.id, a.name])),
    datasources: new Map(dsRows.map((d) => [datasourceKey(d.agentId, d.path), d])),
  };
}

export function groupView(g: GroupState, agentNames: Map<string, string>): GroupView {
  const members = g.members
    .map((ds) => ({
      agent: agentNames.get(ds.agentId) ?? ds.agentId,
      path: ds.path,
      kind: ds.kind,
      datasourceId: ds.id,
    }))
    .sort((a, b) => (a.agent === b.agent ? cmp(a.path, b.path) : cmp(a.agent, b.agent)));
  return { name: g.row.name, members, disk: g.policy.disk, online: g.policy.online };
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

export async function listGroupViews(db: Db | Tx): Promise<GroupView[]> {
  const state = await loadState(db);
  return [...state.groups.values()]
    .sort((a, b) => cmp(a.row.name, b.row.name))
    .map((g) => groupView(g, state.agentNames));
}

export async function getGroupView(db: Db | Tx, name: string): Promise<GroupView> {
  const state = await loadState(db);
  const g = state.groups.get(name);
  if (!g) throw notFound(`group "${name}"`);
  return groupView(g, state.agentNames);
}

export async function findGroupRow(db: Db | Tx, name: string): Promise<GroupRow> {
  const [row] = await db.select().from(protectionGroups).where(eq(protectionGroups.name, name));
  if (!row) throw notFound(`group "${name}"`);
  return row;
}

/**
 * Changes to groups run one at a time (two applies at once would each check against a state the
 * other is changing). A transaction-scoped advisory lock: released at commit or rollback.
 */
export async function lockGroups(tx: Tx): Promise<void> {
  await tx.execute(sql`select pg_advisory_xact_lock(7106354)`);
}
