import { inArray } from 'drizzle-orm';
import type { Db, Tx } from '../db/database.ts';
import { chunks } from '../db/schema.ts';
import type { ChunkLocation } from './pack-writer.ts';

const BATCH = 1000;

/** Where each of these blocks lives (absent hashes are not in the store). */
export async function locateChunks(db: Db | Tx, hexes: string[]): Promise<Map<string, ChunkLocation>> {
  const found = new Map<string, ChunkLocation>();
  const unique = [...new Set(hexes)];
  for (let i = 0; i < unique.length; i += BATCH) {
    const rows = await db
      .select()
      .from(chunks)
      .where(inArray(chunks.hash, unique.slice(i, i + BATCH)));
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
  for (let i = 0; i < sorted.length; i += BATCH) {
    await tx
      .insert(chunks)
      .values(sorted.slice(i, i + BATCH))
      .onConflictDoNothing();
  }
}
