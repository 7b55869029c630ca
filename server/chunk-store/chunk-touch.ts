import { and, eq, inArray, lt, type SQL, sql } from 'drizzle-orm';
import { anyOf } from '../db/array-params.ts';
import type { Db, Tx } from '../db/database.ts';
import { agentChunks, chunks } from '../db/schema.ts';

/*
 * Touching: a backup that reuses a block (the agent owns it, or the store already has it and the
 * agent only proves possession) refreshes the block's `chunks.touched_at`. Garbage collection
 * (server/gc/gc.ts) never sweeps a block touched at or after its cut-off, which is what makes it
 * safe beside running backups: a block a backup counts on is either new (stored with
 * touched_at = now) or touched here when the backup decided to reuse it.
 *
 * To keep incremental backups cheap, only rows touched longer ago than `touchAfterMs` (half the
 * garbage collection grace) are written; fresher rows are left alone. That costs nothing in
 * safety as long as every collection uses a grace of at least `touchAfterMs`, which gc.ts
 * enforces: a row left alone was touched after `now - touchAfterMs`, which is after any cut-off.
 *
 * The touch is also the existence check: a row is reported only if the UPDATE ... RETURNING
 * found it (or a later SELECT saw it fresh). A row that garbage collection deleted meanwhile is
 * not reported, so the caller treats the block as absent and asks the agent for it again. A
 * touch and a sweep of the same row are ordered by the row lock: either the touch commits first
 * (the sweep's re-check of touched_at then fails, the row stays) or the sweep does (the touch
 * finds no row). Both lock rows in hash order, so they never deadlock.
 */

/** Hashes per statement: a backup's base is looked up in one (BackupSession.ownedFromBase). */
const BATCH = 16_384;

/** How old a block's touch time must be before a reuse refreshes it: half the GC grace. */
export function touchAfterMsOf(gcGraceMs: number): number {
  return Math.max(0, Math.floor(gcGraceMs / 2));
}

/**
 * Which of these blocks the agent owns (it uploaded them once, and they are still in the
 * store), touching them: the reuse path of a backup. Ownership and touch age come back from
 * one query per batch (an incremental backup asks this of every block it keeps).
 */
export async function touchOwnedChunks(
  db: Db,
  agentId: string,
  hexes: string[],
  touchAfterMs: number,
): Promise<Set<string>> {
  const found = await touchFound(db, hexes, touchAfterMs, (batch, cutoff) =>
    db
      .select({ hash: chunks.hash, stale: sql<boolean>`${chunks.touchedAt} < ${cutoff}` })
      .from(agentChunks)
      .innerJoin(chunks, eq(chunks.hash, agentChunks.hash))
      .where(and(eq(agentChunks.agentId, agentId), anyOf(agentChunks.hash, batch))),
  );
  return new Set(found.map((r) => r.hash));
}

/**
 * The blocks of these that are in the store, each with whether this agent owns it, touching
 * them: what a backup needs to know of the blocks an agent offers (owned: not needed; stored
 * but not owned: needed once, as proof of possession), in one query per batch.
 */
export async function touchStoredChunks(
  db: Db | Tx,
  agentId: string,
  hexes: string[],
  touchAfterMs: number,
): Promise<Map<string, boolean>> {
  const found = await touchFound(db, hexes, touchAfterMs, (batch, cutoff) =>
    db
      .select({
        hash: chunks.hash,
        stale: sql<boolean>`${chunks.touchedAt} < ${cutoff}`,
        owned: sql<boolean>`${agentChunks.hash} is not null`,
      })
      .from(chunks)
      .leftJoin(agentChunks, and(eq(agentChunks.hash, chunks.hash), eq(agentChunks.agentId, agentId)))
      .where(anyOf(chunks.hash, batch)),
  );
  return new Map(found.map((r) => [r.hash, r.owned]));
}

/**
 * The touch itself, for the rows `find` reports present (with whether their touch is stale).
 * Only stale rows are written; a stale row that cannot be refreshed is reported only if another
 * backup refreshed it meanwhile (a sweep may have removed it).
 */
async function touchFound<T extends { hash: string; stale: boolean }>(
  db: Db | Tx,
  hexes: string[],
  touchAfterMs: number,
  find: (batch: string[], cutoff: SQL) => Promise<T[]>,
): Promise<T[]> {
  const present: T[] = [];
  const unique = [...new Set(hexes)].sort();
  const cutoff = sql`now() - make_interval(secs => ${touchAfterMs / 1000})`;
  for (let i = 0; i < unique.length; i += BATCH) {
    // One look first: a fresh row needs no write, and no collection can sweep it (its touch is
    // after any cut-off). After a recent backup that is nearly every row.
    const stale = new Map<string, T>();
    for (const r of await find(unique.slice(i, i + BATCH), cutoff)) {
      if (r.stale) stale.set(r.hash, r);
      else present.push(r);
    }
    if (stale.size === 0) continue;
    // Lock the stale rows in hash order (the sweep's order too), then refresh them.
    const locked = db
      .select({ hash: chunks.hash })
      .from(chunks)
      .where(and(anyOf(chunks.hash, [...stale.keys()]), lt(chunks.touchedAt, cutoff)))
      .orderBy(chunks.hash)
      .for('update');
    const touched = await db
      .update(chunks)
      .set({ touchedAt: sql`now()` })
      .where(inArray(chunks.hash, locked))
      .returning({ hash: chunks.hash });
    const take = (hash: string) => {
      const row = stale.get(hash);
      if (row) present.push(row);
      stale.delete(hash);
    };
    for (const r of touched) take(r.hash);
    // A stale row not refreshed was swept meanwhile, or touched by another backup (then fresh).
    if (stale.size === 0) continue;
    const fresh = await db
      .select({ hash: chunks.hash })
      .from(chunks)
      .where(and(anyOf(chunks.hash, [...stale.keys()]), sql`${chunks.touchedAt} >= ${cutoff}`));
    for (const r of fresh) take(r.hash);
  }
  return present;
}
