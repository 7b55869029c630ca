import { and, eq, isNull } from 'drizzle-orm';
import type { Db } from '../db/database.ts';
import { agents, datasources, protectionGroups } from '../db/schema.ts';
import { type DiskPolicy, groupPolicySchema } from '../groups/policy.ts';

/** A datasource protected by a group, with what the scheduler and the monitors need of it. */
export interface Member {
  datasourceId: string;
  path: string;
  agentId: string;
  agentName: string;
  groupId: string;
  groupName: string;
  disk: DiskPolicy;
  replicaState: 'consistent' | 'inconsistent';
  createdAt: Date;
}

export interface Members {
  members: Member[];
  /** Groups whose stored policy no longer validates (hand-edited rows): not scheduled. */
  invalid: { groupId: string; groupName: string; updatedAt: Date }[];
}

/**
 * Every datasource in a group whose agent is not revoked: a revoked agent can never run a job,
 * so scheduling or alerting for it would only add noise.
 */
export async function loadMembers(db: Db): Promise<Members> {
  const rows = await db
    .select({
      datasourceId: datasources.id,
      path: datasources.path,
      agentId: datasources.agentId,
      agentName: agents.name,
      groupId: protectionGroups.id,
      groupName: protectionGroups.name,
      groupUpdatedAt: protectionGroups.updatedAt,
      policy: protectionGroups.policy,
      replicaState: datasources.replicaState,
      createdAt: datasources.createdAt,
    })
    .from(datasources)
    .innerJoin(protectionGroups, eq(protectionGroups.id, datasources.groupId))
    .innerJoin(agents, and(eq(agents.id, datasources.agentId), isNull(agents.revokedAt)))
    .orderBy(protectionGroups.name, agents.name, datasources.path);

  // Parsed once per group: the stored policy is already canonical, this only guards its shape.
  const parsed = new Map<string, DiskPolicy | null>();
  const out: Members = { members: [], invalid: [] };
  for (const r of rows) {
    if (!parsed.has(r.groupId)) {
      const p = groupPolicySchema.safeParse(r.policy);
      parsed.set(r.groupId, p.success ? p.data.disk : null);
      if (!p.success)
        out.invalid.push({ groupId: r.groupId, groupName: r.groupName, updatedAt: r.groupUpdatedAt });
    }
    const disk = parsed.get(r.groupId);
    if (!disk) continue;
    out.members.push({
      datasourceId: r.datasourceId,
      path: r.path,
      agentId: r.agentId,
      agentName: r.agentName,
      groupId: r.groupId,
      groupName: r.groupName,
      disk,
      replicaState: r.replicaState,
      createdAt: r.createdAt,
    });
  }
  return out;
}
