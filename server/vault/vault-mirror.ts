import { and, eq, inArray, isNull, sql } from 'drizzle-orm';
import { anyOf, plainArray } from '../db/array-params.ts';
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
const LOOKUP_BATCH = 10_000;

export type BlobRow = typeof vaultBlobs.$inferSelect;

/** The blobs of this type the vault already holds, of those asked for. */
export async function locateBlobs(db: Db | Tx, type: BlobType, ids: string[]): Promise<Map<string, BlobRow>> {
  const found = new Map<string, BlobRow>();
  const unique = [...new Set(ids)];
  for (let i = 0; i < unique.length; i += LOOKUP_BATCH) {
    const rows = await db
      .select()
      .from(vaultBlobs)
      .where(and(eq(vaultBlobs.type, type), anyOf(vaultBlobs.id, unique.slice(i, i + LOOKUP_BATCH))));
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
  // One statement with array parameters (server/db/array-params.ts): a pack holds thousands of blobs.
  const e = pack.entries;
  await tx.execute(sql`
    insert into vault_blobs (id, type, pack_id, "offset", length, uncompressed_length)
    select b.id, b.type, ${pack.id}, b.off, b.len, b.ulen
    from unnest(
      ${plainArray(e.map((x) => x.id))}::text[],
      ${plainArray(e.map((x) => x.type))}::text[],
      ${plainArray(e.map((x) => x.offset))}::bigint[],
      ${plainArray(e.map((x) => x.length))}::integer[],
      ${plainArray(e.map((x) => x.uncompressedLength ?? null))}::integer[]
    ) as b(id, type, off, len, ulen)
    on conflict do nothing`);
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
