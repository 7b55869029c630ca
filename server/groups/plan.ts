import { cancelScheduledJobs } from '../jobs/job-repo.ts';
import { randomUUID } from 'node:crypto';
import { and, eq, inArray, notInArray, sql } from 'drizzle-orm';
import { addDatasource } from '../datasources/datasources.ts';
import type { Db, Tx } from '../db/database.ts';
import { datasources, protectionGroups } from '../db/schema.ts';
import { diskPointsOf, planPrune } from '../retention/retention.ts';
import { deleteRecoveryPointRows, type PrunedPoint } from '../retention/prune-points.ts';
import { type CurrentState, datasourceKey, type DatasourceRow, type GroupState } from './group-rows.ts';
import { type MemberKind, type MemberSpec, memberLabel, type ParsedEntry } from './group-spec.ts';
import type { ConfigIssue } from './issues.ts';
import { formatPath, type GroupPolicy } from './policy.ts';

/*
 * Turning desired groups into changes: one planner for `apply`, `group create` and `group
 * update`, so that the three check the same things and report changes the same way. A plan is
 * made and executed in one transaction; a dry run stops after making it.
 */

export type PlanChange =
  | { type: 'group-created'; group: string }
  | { type: 'policy-changed'; group: string; field: string; from: unknown; to: unknown }
  | { type: 'datasource-created'; group: string; agent: string; path: string; kind: MemberKind }
  | {
      type: 'member-added' | 'member-removed';
      group: string;
      agent: string;
      path: string;
      kind: MemberKind;
      /** Null for a datasource the plan creates. */
      datasourceId: string | null;
    }
  | ({ type: 'recovery-point-pruned'; group: string; agent: string; path: string } & PrunedPoint);

export interface PlannedGroup {
  name: string;
  policy: GroupPolicy;
  existing: GroupState | undefined;
  policyChanged: boolean;
  /** Desired members; a null id is a datasource to create. */
  members: { member: MemberSpec; datasourceId: string | null }[];
  changed: boolean;
}

export interface Plan {
  groups: PlannedGroup[];
  changes: PlanChange[];
  prune: PrunedPoint[];
  issues: ConfigIssue[];
}

export interface PlanEntry {
  parsed: ParsedEntry;
  /** Where the entry is in the input, for messages: ["groups", 0], or [] for a REST body. */
  at: (string | number)[];
}

/**
 * - `apply`: the entries are the whole file; a member may move between groups of the file.
 * - `create`: the group must not exist. `update`: it must (checked by the caller).
 */
export type PlanMode = 'apply' | 'create' | 'update';

export async function planGroups(
  db: Db | Tx,
  state: CurrentState,
  entries: PlanEntry[],
  mode: PlanMode,
  now: Date,
): Promise<Plan> {
  const issues: ConfigIssue[] = entries.flatMap((e) => e.parsed.issues);
  const inFile = new Set(entries.map((e) => e.parsed.name).filter((n) => n !== undefined));
  const names = new Map<string, (string | number)[]>();
  const claimed = new Map<string, { entry: PlanEntry; at: (string | number)[] }>();
  const groups: PlannedGroup[] = [];

  for (const entry of entries) {
    const { parsed, at } = entry;
    const name = parsed.name;
    if (name !== undefined) {
      const first = names.get(name);
      if (first)
        issues.push({
          path: [...at, 'name'],
          message: `group "${name}" is already defined at ${formatPath(first)}`,
          code: 'INVALID_INPUT',
        });
      else names.set(name, at);
    }
    const existing = name === undefined ? undefined : state.groups.get(name);
    if (mode === 'create' && existing)
      issues.push({ path: [...at, 'name'], message: `group "${name}" already exists`, code: 'CONFLICT' });

    const members: PlannedGroup['members'] = [];
    for (const { member, at: mAt } of parsed.members) {
      const label = memberLabel(member);
      const agent = state.agentsByName.get(member.agent);
      if (!agent) {
        issues.push({
          path: [...mAt, 'agent'],
          message: `no agent named "${member.agent}" is enrolled`,
          code: 'NOT_FOUND',
        });
        continue;
      }
      const key = datasourceKey(agent.id, member.path);
      const prev = claimed.get(key);
      if (prev) {
        issues.push(
          prev.entry === entry
            ? {
                path: mAt,
                message: `${label} is listed twice (also at ${formatPath(prev.at)})`,
                code: 'INVALID_INPUT',
              }
            : {
                path: mAt,
                message: `${label} is also a member of group "${prev.entry.parsed.name ?? '?'}" (${formatPath(prev.at)}); a datasource belongs to at most one group`,
                code: 'CONFLICT',
              },
        );
        continue;
      }
      claimed.set(key, { entry, at: mAt });
      const ds = state.datasources.get(key);
      if (ds && ds.kind !== member.kind)
        issues.push({
          path: [...mAt, 'kind'],
          message: `datasource ${label} exists with kind ${ds.kind}, not ${member.kind}`,
          code: 'CONFLICT',
        });
      if (ds?.groupId && ds.groupId !== existing?.row.id) {
        const other = state.groupsById.get(ds.groupId)!;
        // A file may move a datasource between two of its groups; nothing else takes it silently.
        if (!(mode === 'apply' && inFile.has(other.row.name)))
          issues.push({
            path: mAt,
            message: `${label} is already in group "${other.row.name}"; remove it from that group first`,
            code: 'CONFLICT',
          });
      }
      members.push({ member, datasourceId: ds?.id ?? null });
    }
    if (name !== undefined && parsed.policy)
      groups.push({
        name,
        policy: parsed.policy,
        existing,
        policyChanged: existing ? diffPolicy(existing.policy, parsed.policy).length > 0 : true,
        members,
        changed: false,
      });
  }
  if (issues.length > 0) return { groups: [], changes: [], prune: [], issues };

  // Each group's changes together, its pruned points last.
  const perGroup = new Map<PlannedGroup, PlanChange[]>(groups.map((g) => [g, []]));
  const prune: PrunedPoint[] = [];
  const byId = new Map([...state.datasources.values()].map((d) => [d.id, d]));
  const retentionChanged: { group: PlannedGroup; ds: DatasourceRow }[] = [];
  for (const g of groups) {
    const changes = perGroup.get(g)!;
    const group = g.name;
    if (!g.existing) changes.push({ type: 'group-created', group });
    else
      for (const d of diffPolicy(g.existing.policy, g.policy))
        changes.push({ type: 'policy-changed', group, ...d });
    const wanted = new Set<string>();
    for (const { member, datasourceId } of g.members) {
      const { agent, path, kind } = member;
      if (!datasourceId) {
        changes.push({ type: 'datasource-created', group, agent, path, kind });
        changes.push({ type: 'member-added', group, agent, path, kind, datasourceId });
        continue;
      }
      wanted.add(datasourceId);
      const ds = byId.get(datasourceId)!;
      if (ds.groupId !== g.existing?.row.id)
        changes.push({ type: 'member-added', group, agent, path, kind, datasourceId });
      // Retention depends only on retentionDays: a point's fate changes only if that does.
      const oldDays = ds.groupId ? state.groupsById.get(ds.groupId)?.policy.disk.retentionDays : undefined;
      if (oldDays !== g.policy.disk.retentionDays) retentionChanged.push({ group: g, ds });
    }
    for (const ds of g.existing?.members ?? [])
      if (!wanted.has(ds.id))
        changes.push({
          type: 'member-removed',
          group,
          agent: state.agentNames.get(ds.agentId) ?? ds.agentId,
          path: ds.path,
          kind: ds.kind,
          datasourceId: ds.id,
        });
  }

  // Points the new retention prunes that the old one keeps (points due anyway are retention's).
  const points = await diskPointsOf(
    db,
    retentionChanged.map((r) => r.ds.id),
  );
  for (const { group, ds } of retentionChanged) {
    const mine = points.filter((p) => p.datasourceId === ds.id);
    const old = ds.groupId ? state.groupsById.get(ds.groupId)?.policy.disk : undefined;
    const dueAnyway = new Set(old ? planPrune(old, mine, now) : []);
    const pruneIds = new Set(planPrune(group.policy.disk, mine, now).filter((id) => !dueAnyway.has(id)));
    for (const p of mine) {
      if (!pruneIds.has(p.id)) continue;
      const point = { rpId: p.id, datasourceId: ds.id, createdAt: p.createdAt.toISOString() };
      prune.push(point);
      perGroup.get(group)!.push({
        type: 'recovery-point-pruned',
        group: group.name,
        agent: state.agentNames.get(ds.agentId) ?? ds.agentId,
        path: ds.path,
        ...point,
      });
    }
  }
  for (const [g, changes] of perGroup) g.changed = changes.length > 0;
  const changes = [...perGroup.values()].flat();
  return { groups, changes, prune, issues };
}

/** Carries out a plan without issues, inside the transaction it was made in. */
export async function executePlan(tx: Tx, plan: Plan): Promise<void> {
  for (const g of plan.groups) {
    if (!g.changed) continue;
    let id = g.existing?.row.id;
    if (!id) {
      id = randomUUID();
      await tx.insert(protectionGroups).values({ id, name: g.name, policy: g.policy });
    } else {
      await tx
        .update(protectionGroups)
        .set({ ...(g.policyChanged ? { policy: g.policy } : {}), updatedAt: sql`now()` })
        .where(eq(protectionGroups.id, id));
    }
    const ids: string[] = [];
    for (const { member, datasourceId } of g.members)
      ids.push(datasourceId ?? (await addDatasource(tx, member)).id);
    if (ids.length > 0) await tx.update(datasources).set({ groupId: id }).where(inArray(datasources.id, ids));
    await tx
      .update(datasources)
      .set({ groupId: null })
      .where(
        ids.length > 0
          ? and(eq(datasources.groupId, id), notInArray(datasources.id, ids))
          : eq(datasources.groupId, id),
      );
    await cancelScheduledJobs(tx, id, `the datasource left protection group "${g.name}"`, ids);
  }
  await deleteRecoveryPointRows(
    tx,
    plan.prune.map((p) => p.rpId),
  );
}

/** Field-by-field differences of two policies: "disk.retentionDays: 14 -> 30". */
export function diffPolicy(
  from: unknown,
  to: unknown,
  field = '',
): { field: string; from: unknown; to: unknown }[] {
  if (isPlainObject(from) && isPlainObject(to)) {
    const keys = [...new Set([...Object.keys(from), ...Object.keys(to)])];
    return keys.flatMap((k) => diffPolicy(from[k], to[k], field ? `${field}.${k}` : k));
  }
  return canonicalJson(from) === canonicalJson(to) ? [] : [{ field, from: from ?? null, to: to ?? null }];
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** JSON with object keys sorted: equal values, equal text. */
export function canonicalJson(v: unknown): string {
  if (v === undefined) return 'null';
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (isPlainObject(v))
    return `{${Object.keys(v)
      .filter((k) => v[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(v[k])}`)
      .join(',')}}`;
  return JSON.stringify(v);
}
