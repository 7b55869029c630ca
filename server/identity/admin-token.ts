import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { eq } from 'drizzle-orm';
import { writeFileAtomic } from '../../lib/durable-fs.ts';
import type { Db } from '../db/database.ts';
import { adminTokens } from '../db/schema.ts';
import { hashSecret } from './secrets.ts';

/**
 * The admin token is written to DATA/admin-token (0600) on first start; the CLI reads it from
 * there. The database keeps only its hash, so a server sharing a PostgreSQL database with
 * another one accepts both servers' tokens.
 */
export async function ensureAdminToken(db: Db, file: string): Promise<void> {
  let token: string | undefined;
  try {
    token = (await readFile(file, 'utf8')).trim();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (!token) {
    token = `hfa_${randomUUID().replace(/-/g, '')}${randomUUID().replace(/-/g, '')}`;
    await writeFileAtomic(file, `${token}\n`, 0o600);
  }
  const tokenHash = hashSecret(token);
  const found = await db.select().from(adminTokens).where(eq(adminTokens.tokenHash, tokenHash));
  if (found.length === 0) await db.insert(adminTokens).values({ id: randomUUID(), tokenHash });
}

export async function isAdminToken(db: Db, token: string): Promise<boolean> {
  const found = await db
    .select({ id: adminTokens.id })
    .from(adminTokens)
    .where(eq(adminTokens.tokenHash, hashSecret(token)));
  return found.length > 0;
}
