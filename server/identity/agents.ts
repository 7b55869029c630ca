import { eq, sql } from 'drizzle-orm';
import { ProtocolError } from '../../protocol/errors.ts';
import type { Db } from '../db/database.ts';
import { agents } from '../db/schema.ts';
import { notFound } from '../errors.ts';
import { secretMatches } from './secrets.ts';

export type AgentRow = typeof agents.$inferSelect;

/** Checks an agent's credential on every connection. */
export async function authenticateAgent(db: Db, agentId: string, secret: string): Promise<AgentRow> {
  const [agent] = await db.select().from(agents).where(eq(agents.id, agentId));
  if (!agent || !secretMatches(secret, agent.secretHash)) {
    throw new ProtocolError('PROTO_ERR_AUTH', 'unknown agent or wrong credential; enroll the agent again');
  }
  if (agent.revokedAt) {
    throw new ProtocolError('PROTO_ERR_REVOKED', `agent "${agent.name}" was revoked by an administrator`);
  }
  return agent;
}

export async function markSeen(db: Db, agentId: string, info: { hostname: string; agentVersion: string }) {
  await db
    .update(agents)
    .set({ lastSeenAt: sql`now()`, hostname: info.hostname, agentVersion: info.agentVersion })
    .where(eq(agents.id, agentId));
}

export async function findAgentByName(db: Db, name: string): Promise<AgentRow> {
  const [agent] = await db.select().from(agents).where(eq(agents.name, name));
  if (!agent) throw notFound(`agent "${name}"`);
  return agent;
}

export async function revokeAgent(db: Db, name: string): Promise<AgentRow> {
  const agent = await findAgentByName(db, name);
  const [row] = await db
    .update(agents)
    .set({ revokedAt: sql`now()` })
    .where(eq(agents.id, agent.id))
    .returning();
  return row!;
}

export async function setAgentThrottle(db: Db, name: string, throttle: object | null): Promise<AgentRow> {
  const agent = await findAgentByName(db, name);
  const [row] = await db
    .update(agents)
    .set({ throttle: throttle as Record<string, unknown> | null })
    .where(eq(agents.id, agent.id))
    .returning();
  return row!;
}
