import { count, sql } from 'drizzle-orm';
import { anyOf, plainArray } from '../db/array-params.ts';
import type { Db, Tx } from '../db/database.ts';
import { chunks } from '../db/schema.ts';
import type { ChunkLocation } from './pack-writer.ts';

/** Rows per unnest insert (one statement, one parameter per column) or ids per lookup. */
const ARRAY_BATCH = 10_000;

/** Where each of these blocks lives (absent hashes are not in the store). */
export async function locateChunks(db: Db | Tx, hexes: string[]): Promise<Map<string, ChunkLocation>> {
  const found = new Map<string, ChunkLocation>();
  const unique = [...new Set(hexes)];
  for (let i = 0; i < unique.length; i += ARRAY_BATCH) {
    const rows = await db
      .select()
      .from(chunks)
      .where(anyOf(chunks.hash, unique.slice(i, i + ARRAY_BATCH)));
    for (const r of rows) {
      found.set(r.hash, {
        hash: r.hash,
        pack: r.pack,
        offset: r.offset,
        size: r.size,
        storedSize: r.storedSize,
        encoding: r.encoding,
      });
    }
  }
  return found;
}

/**
 * Records durable blocks in the index. A hash already indexed keeps its first location (two
 * backups racing to store the same block both succeed; the second copy is dead space).
 */
export async function indexChunks(tx: Db | Tx, locations: ChunkLocation[]): Promise<void> {
  // In hash order: two backups indexing the same new blocks then lock them in the same order
  // and cannot deadlock.
  const sorted = [...locations].sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : 0));
  for (let i = 0; i < sorted.length; i += ARRAY_BATCH) {
    const part = sorted.slice(i, i + ARRAY_BATCH);
    await tx.execute(sql`
      insert into chunks (hash, pack, "offset", size, stored_size, encoding)
      select * from unnest(
        ${plainArray(part.map((l) => l.hash))}::text[],
        ${plainArray(part.map((l) => l.pack))}::text[],
        ${plainArray(part.map((l) => l.offset))}::bigint[],
        ${plainArray(part.map((l) => l.size))}::integer[],
        ${plainArray(part.map((l) => l.storedSize))}::integer[],
        ${plainArray(part.map((l) => l.encoding))}::smallint[]
      )
      on conflict do nothing`);
  }
}

/** How many of these blocks the index holds (a cheap check, without loading the rows). */
export async function countIndexed(db: Db | Tx, hexes: string[]): Promise<number> {
  const unique = [...new Set(hexes)];
  let n = 0;
  for (let i = 0; i < unique.length; i += ARRAY_BATCH) {
    const rows = await db
      .select({ n: count() })
      .from(chunks)
      .where(anyOf(chunks.hash, unique.slice(i, i + ARRAY_BATCH)));
    n += Number(rows[0]?.n ?? 0);
  }
  return n;
}

/** Records that an agent owns (may name in its recovery points) these blocks. */
export async function recordOwnership(tx: Db | Tx, agentId: string, hexes: string[]): Promise<void> {
  for (let i = 0; i < hexes.length; i += ARRAY_BATCH) {
    await tx.execute(sql`
      insert into agent_chunks (agent_id, hash)
      select ${agentId}, h from unnest(${plainArray(hexes.slice(i, i + ARRAY_BATCH))}::text[]) as h
      on conflict do nothing`);
  }
}
