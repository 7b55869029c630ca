import { randomUUID } from 'node:crypto';
import { eq, sql } from 'drizzle-orm';
import { AppError } from '../errors.ts';
import type { Db } from '../db/database.ts';
import { agents, enrollmentTokens } from '../db/schema.ts';
import { hashSecret, newSecret } from './secrets.ts';

export const AGENT_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export async function createEnrollmentToken(
  db: Db,
  ttlMs: number,
): Promise<{ token: string; expiresAt: Date }> {
  const token = newSecret('hfe');
  const expiresAt = new Date(Date.now() + ttlMs);
  await db.insert(enrollmentTokens).values({ id: randomUUID(), tokenHash: hashSecret(token), expiresAt });
  return { token, expiresAt };
}

/**
 * Trades a one-time token for an agent identity. The token row is locked and consumed in the
 * same transaction that creates the agent, so a token can never enroll two agents.
 */
export async function enrollAgent(
  db: Db,
  input: { token: string; name: string; hostname: string },
): Promise<{ agentId: string; name: string; secret: string }> {
  if (!AGENT_NAME.test(input.name)) {
    throw new AppError(
      'INVALID_INPUT',
      `agent name "${input.name}" must be 1-63 letters, digits, ".", "_" or "-"`,
    );
  }
  return db.transaction(async (tx) => {
    const [row] = await tx
      .select()
      .from(enrollmentTokens)
      .where(eq(enrollmentTokens.tokenHash, hashSecret(input.token)))
      .for('update');
    if (!row) throw new AppError('TOKEN_INVALID', 'unknown enrollment token');
    if (row.usedAt) throw new AppError('TOKEN_INVALID', 'enrollment token was already used');
    if (row.expiresAt.getTime() <= Date.now())
      throw new AppError('TOKEN_INVALID', 'enrollment token has expired');
    const [taken] = await tx.select({ id: agents.id }).from(agents).where(eq(agents.name, input.name));
    if (taken) throw new AppError('CONFLICT', `an agent named "${input.name}" is already enrolled`);
    const agentId = randomUUID();
    const secret = newSecret('hfk');
    await tx
      .insert(agents)
      .values({ id: agentId, name: input.name, hostname: input.hostname, secretHash: hashSecret(secret) });
    await tx
      .update(enrollmentTokens)
      .set({ usedAt: sql`now()`, usedByAgentId: agentId })
      .where(eq(enrollmentTokens.id, row.id));
    return { agentId, name: input.name, secret };
  });
}
