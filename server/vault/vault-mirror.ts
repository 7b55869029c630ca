import { and, eq, inArray, isNull } from 'drizzle-orm';
import type { Db, Tx } from '../db/database.ts';
import { vaultBlobs, vaultPacks } from '../db/schema.ts';
import type { IndexPack } from './format/index-file.ts';
import type { BlobType, PackEntry } from './format/pack.ts';

/*
 * The database mirror of the vault index (tables vault_packs, vault_blobs): which blob is in
 * which pack, so the online backup knows what the vault already holds and a restore finds a
 * blob without loading every index file. The vault's own index/ stays the source of truth; the
 * mirror is rebuilt from it on attach.
 */

const BATCH = 1000;

export type BlobRow = typeof vaultBlobs.$inferSelect;

/** The blobs of this type the vault already holds, of those asked for. */
export async function locateBlobs(db: Db | Tx, type: BlobType, ids: string[]): Promise<Map<string, BlobRow>> {
  const found = new Map<string, BlobRow>();
  const unique = [...new Set(ids)];
  for (let i = 0; i < unique.length; i += BATCH) {
    const rows = await db
      .select()
      .from(vaultBlobs)
      .where(and(eq(vaultBlobs.type, type), inArray(vaultBlobs.id, unique.slice(i, i + BATCH))));
    for (const r of rows) found.set(r.id, r);
  }
  return found;
}

/** Records a stored pack and its blobs (one transaction; a blob already mirrored keeps its first pack). */
export async function recordPack(
  db: Db,
  pack: { id: string; type: BlobType; size: number; entries: PackEntry[]; indexId?: string | null },
): Promise<void> {
  await db.transaction(async (tx) => recordPackIn(tx, pack));
}

export async function recordPackIn(
  tx: Db | Tx,
  pack: { id: string; type: BlobType; size: number; entries: PackEntry[]; indexId?: string | null },
): Promise<void> {
  await tx
    .insert(vaultPacks)
    .values({
      id: pack.id,
      type: pack.type,
      size: pack.size,
      indexId: pack.indexId ?? null,
      pendingEntries: pack.indexId ? null : pack.entries,
    })
    .onConflictDoNothing();
  for (let i = 0; i < pack.entries.length; i += BATCH) {
    await tx
      .insert(vaultBlobs)
      .values(
        pack.entries.slice(i, i + BATCH).map((e) => ({
          id: e.id,
          type: e.type,
          packId: pack.id,
          offset: e.offset,
          length: e.length,
          uncompressedLength: e.uncompressedLength ?? null,
        })),
      )
      .onConflictDoNothing();
  }
}

/** Packs recorded but not yet named by an index file (this run's, or an interrupted run's). */
export async function unindexedPacks(db: Db | Tx): Promise<IndexPack[]> {
  const packs = await db.select().from(vaultPacks).where(isNull(vaultPacks.indexId));
  return packs.map((p) => ({ id: p.id, blobs: (p.pendingEntries ?? []) as PackEntry[] }));
}

export async function markIndexed(db: Db | Tx, packIds: string[], indexId: string): Promise<void> {
  for (let i = 0; i < packIds.length; i += BATCH) {
    await db
      .update(vaultPacks)
      .set({ indexId, pendingEntries: null })
      .where(inArray(vaultPacks.id, packIds.slice(i, i + BATCH)));
  }
}
