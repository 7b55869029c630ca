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
  for (let i = 0; i < locations.length; i += BATCH) {
    await tx
      .insert(chunks)
      .values(locations.slice(i, i + BATCH))
      .onConflictDoNothing();
  }
}
