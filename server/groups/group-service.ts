import { cancelScheduledJobs } from '../jobs/job-repo.ts';
import { and, eq, inArray, like } from 'drizzle-orm';
import { z } from 'zod';
import type { Db, Tx } from '../db/database.ts';
import { datasources, protectionGroups, recoveryPoints, scheduleMarks } from '../db/schema.ts';
import { notFound } from '../errors.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { deleteRecoveryPointRows, type PrunedPoint, removeManifests } from '../retention/prune-points.ts';
import {
  findGroupRow,
  getGroupView,
  type GroupView,
  groupView,
  listGroupViews,
  loadState,
  lockGroups,
} from './group-rows.ts';
import {
  memberLabel,
  memberSchema,
  type MemberSpec,
  type ParsedEntry,
  parseGroupEntry,
} from './group-spec.ts';
import { type ConfigIssue, issuesError } from './issues.ts';
import { executePlan, type PlanChange, planGroups } from './plan.ts';
import { type GroupPolicy, groupPolicySchema, inputIssues } from './policy.ts';

/*
 * Protection groups one at a time (REST API and `holdfast group ...`). Create and update go
 * through the same planner as `apply`, so they check and report the same things: a datasource
 * already in another group is refused, a member that is not yet a datasource is created, and a
 * shorter retention prunes at once what it no longer keeps.
 */

export interface GroupDeps {
  db: Db;
  manifests: ManifestStore;
}

export interface GroupChangeResult {
  group: GroupView;
  changes: PlanChange[];
}

export const listGroups = (db: Db): Promise<GroupView[]> => listGroupViews(db);
export const showGroup = (db: Db, name: string): Promise<GroupView> => getGroupView(db, name);

/** `input`: { name, members?, disk, online? }, as one entry of the YAML file. */
export async function createGroup(
  deps: GroupDeps,
  input: unknown,
  now = new Date(),
): Promise<GroupChangeResult> {
  return changeGroup(deps, parseGroupEntry(input, []), 'create', now);
}

const memberList = z.array(z.unknown(), { error: 'must be a list of { agent, path, kind }' }).optional();
const policyPart = z.record(z.string(), z.unknown(), { error: 'must be a map of policy fields' }).optional();
const patchSchema = z.strictObject(
  {
    disk: policyPart,
    online: policyPart,
    /** The whole member list; addMembers and removeMembers apply after it. */
    members: memberList,
    addMembers: memberList,
    removeMembers: memberList,
  },
  { error: 'must be a map of changes: { disk?, online?, members?, addMembers?, removeMembers? }' },
);

/**
 * A partial change: policy fields given replace those of the group (nested maps merge, so
 * `{ disk: { recoveryPoints: { times: [...] } } }` keeps the days), members are replaced,
 * added or removed.
 */
export async function updateGroup(
  deps: GroupDeps,
  name: string,
  patchInput: unknown,
  now = new Date(),
): Promise<GroupChangeResult> {
  const patch = patchSchema.safeParse(patchInput);
  if (!patch.success)
    throw issuesError(
      inputIssues(patch.error).map((i) => ({ ...i, code: 'INVALID_INPUT' as const })),
      'nothing was changed',
    );
  const p = patch.data;
  return deps.db
    .transaction(async (tx) => {
      await lockGroups(tx);
      const state = await loadState(tx);
      const current = state.groups.get(name);
      if (!current) throw notFound(`group "${name}"`);
      const issues: ConfigIssue[] = [];

      // Members: the current list (or the given one), plus additions, less removals.
      const currentView = groupView(current, state.agentNames);
      let members: ParsedEntry['members'] = currentView.members.map((m, i) => ({
        member: { agent: m.agent, path: m.path, kind: m.kind },
        at: ['members', i],
      }));
      if (p.members) members = parseMembers(p.members, 'members', issues);
      const key = (m: { agent: string; path: string }) => `${m.agent}\0${m.path}`;
      for (const add of parseMembers(p.addMembers ?? [], 'addMembers', issues))
        if (!members.some((m) => key(m.member) === key(add.member))) members.push(add);
      for (const remove of parseMembers(p.removeMembers ?? [], 'removeMembers', issues)) {
        const before = members.length;
        members = members.filter((m) => key(m.member) !== key(remove.member));
        if (members.length === before)
          issues.push({
            path: remove.at,
            message: `${memberLabel(remove.member)} is not a member of group "${name}"`,
            code: 'NOT_FOUND',
          });
      }

      const merged = mergePolicy(current.policy, { disk: p.disk, online: p.online });
      const policy = groupPolicySchema.safeParse(merged);
      if (!policy.success)
        issues.push(...inputIssues(policy.error).map((i) => ({ ...i, code: 'INVALID_INPUT' as const })));
      const entry: ParsedEntry = {
        name,
        members,
        policy: policy.success ? policy.data : undefined,
        issues,
      };
      return planAndExecute(tx, state, entry, 'update', now);
    })
    .then((r) => finish(deps, r));
}

function parseMembers(
  list: unknown[],
  field: string,
  issues: ConfigIssue[],
): { member: MemberSpec; at: (string | number)[] }[] {
  const out: { member: MemberSpec; at: (string | number)[] }[] = [];
  list.forEach((m, i) => {
    const r = memberSchema.safeParse(m);
    if (r.success) out.push({ member: r.data, at: [field, i] });
    else
      issues.push(
        ...inputIssues(r.error).map((x) => ({
          ...x,
          path: [field, i, ...x.path],
          code: 'INVALID_INPUT' as const,
        })),
      );
  });
  return out;
}

/**
 * Deep merge of a partial policy into the current one. A map that switches its variant
 * (consistencyCheck `when`, online `schedule` daily/weekly) is replaced, not merged, since
 * the fields of one variant make no sense in the other.
 */
export function mergePolicy(current: GroupPolicy, patch: Record<string, unknown>): unknown {
  const merge = (cur: unknown, change: unknown, path: string): unknown => {
    if (change === undefined) return cur;
    if (!isMap(cur) || !isMap(change)) return change;
    if (path === 'online.schedule' || ('when' in change && change.when !== cur.when)) return change;
    const out: Record<string, unknown> = { ...cur };
    for (const [k, v] of Object.entries(change)) out[k] = merge(cur[k], v, path ? `${path}.${k}` : k);
    return out;
  };
  return merge(current, patch, '');
}

const isMap = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

async function changeGroup(
  deps: GroupDeps,
  entry: ParsedEntry,
  mode: 'create' | 'update',
  now: Date,
): Promise<GroupChangeResult> {
  const r = await deps.db.transaction(async (tx) => {
    await lockGroups(tx);
    return planAndExecute(tx, await loadState(tx), entry, mode, now);
  });
  return finish(deps, r);
}

async function planAndExecute(
  tx: Tx,
  state: Awaited<ReturnType<typeof loadState>>,
  entry: ParsedEntry,
  mode: 'create' | 'update',
  now: Date,
) {
  const plan = await planGroups(tx, state, [{ parsed: entry, at: [] }], mode, now);
  if (plan.issues.length > 0) throw issuesError(plan.issues, 'nothing was changed');
  await executePlan(tx, plan);
  return { group: await getGroupView(tx, entry.name!), changes: plan.changes, prune: plan.prune };
}

async function finish(
  deps: GroupDeps,
  r: { group: GroupView; changes: PlanChange[]; prune: PrunedPoint[] },
): Promise<GroupChangeResult> {
  await removeManifests(
    deps.manifests,
    r.prune.map((p) => p.rpId),
  );
  return { group: r.group, changes: r.changes };
}

export interface DeleteResult {
  name: string;
  keptData: boolean;
  /** The datasources that left the group; they stay, unprotected by any policy. */
  members: GroupView['members'];
  /** Disk recovery points deleted with the group (none with keepData). */
  deletedRecoveryPoints: PrunedPoint[];
}

/**
 * Deletes a group. Its datasources stay (in no group). With keepData their recovery points
 * stay too, and are never pruned while the datasources are in no group; without it every disk
 * recovery point of the members is deleted: rows in the transaction, manifests after it.
 */
export async function deleteGroup(
  deps: GroupDeps,
  name: string,
  opts: { keepData: boolean },
): Promise<DeleteResult> {
  const r = await deps.db.transaction(async (tx) => {
    await lockGroups(tx);
    const row = await findGroupRow(tx, name);
    const state = await loadState(tx);
    const members = groupView(state.groupsById.get(row.id)!, state.agentNames).members;
    const ids = members.map((m) => m.datasourceId);
    const points =
      opts.keepData || ids.length === 0
        ? []
        : await tx
            .select({
              rpId: recoveryPoints.id,
              datasourceId: recoveryPoints.datasourceId,
              createdAt: recoveryPoints.createdAt,
            })
            .from(recoveryPoints)
            .where(and(eq(recoveryPoints.tier, 'disk'), inArray(recoveryPoints.datasourceId, ids)))
            .orderBy(recoveryPoints.createdAt);
    const deleted = points.map((p) => ({ ...p, createdAt: p.createdAt.toISOString() }));
    await deleteRecoveryPointRows(
      tx,
      deleted.map((p) => p.rpId),
    );
    await tx.update(datasources).set({ groupId: null }).where(eq(datasources.groupId, row.id));
    await cancelScheduledJobs(tx, row.id, `protection group "${name}" was deleted`);
    await tx.delete(scheduleMarks).where(like(scheduleMarks.key, `group:${row.id}:%`));
    await tx.delete(protectionGroups).where(eq(protectionGroups.id, row.id));
    return { members, deleted };
  });
  await removeManifests(
    deps.manifests,
    r.deleted.map((p) => p.rpId),
  );
  return { name, keptData: opts.keepData, members: r.members, deletedRecoveryPoints: r.deleted };
}
