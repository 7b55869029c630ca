import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { indexChunks, locateChunks } from './chunk-index.ts';
import type { ChunkLocation } from './pack-writer.ts';
import { openTestDatabase } from './test-database.test-helpers.ts';

/*
 * Against a real database: PGlite in a temp folder, or a fresh PostgreSQL database when
 * HOLDFAST_TEST_DATABASE_URL is set. Each test uses hashes of its own, so they share one.
 */
let dir: string;
let database: Awaited<ReturnType<typeof openTestDatabase>>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-chunk-index-'));
  database = await openTestDatabase(dir);
});
afterAll(async () => {
  await database?.drop();
  await rm(dir, { recursive: true, force: true });
});

const hex = (s: string) => createHash('sha256').update(s).digest('hex');
const PACK_A = 'a'.repeat(32);
const PACK_B = 'b'.repeat(32);

function loc(name: string, pack: string, offset: number): ChunkLocation {
  return {
    hash: hex(name),
    pack,
    offset,
    size: 4096,
    storedSize: 1000 + (offset % 3000),
    encoding: offset % 2,
  };
}

describe('chunk index', () => {
  it('locates what was indexed, and nothing else', async () => {
    const locs = [loc('one', PACK_A, 45), loc('two', PACK_A, 5000), loc('three', PACK_B, 45)];
    await indexChunks(database.db, locs);
    const found = await locateChunks(database.db, [
      hex('two'),
      hex('absent'),
      hex('one'),
      hex('three'),
      hex('one'),
    ]);
    expect([...found.keys()].sort()).toEqual([hex('one'), hex('three'), hex('two')].sort());
    for (const l of locs) expect(found.get(l.hash)).toEqual(l);
    expect((await locateChunks(database.db, [])).size).toBe(0);
    expect((await locateChunks(database.db, [hex('absent')])).size).toBe(0);
  });

  it('keeps the first location when the same hash is indexed again', async () => {
    const first = loc('dup', PACK_A, 101);
    await indexChunks(database.db, [first]);
    // A second backup stored the same block elsewhere; in a transaction, as the session does.
    await database.db.transaction(async (tx) => {
      await indexChunks(tx, [{ ...loc('dup', PACK_B, 202) }, loc('new', PACK_B, 303)]);
      expect((await locateChunks(tx, [hex('dup')])).get(hex('dup'))).toEqual(first);
    });
    const found = await locateChunks(database.db, [hex('dup'), hex('new')]);
    expect(found.get(hex('dup'))).toEqual(first);
    expect(found.get(hex('new'))).toEqual(loc('new', PACK_B, 303));
  });

  it('handles more hashes than one batch, and offsets past 32 bits', async () => {
    const many = Array.from({ length: 1200 }, (_, i) => loc(`many-${i}`, PACK_B, 2 ** 33 + i));
    await indexChunks(database.db, many);
    const found = await locateChunks(
      database.db,
      many.map((l) => l.hash),
    );
    expect(found.size).toBe(1200);
    expect(found.get(many[1199]!.hash)).toEqual(many[1199]);
    expect(found.get(many[0]!.hash)?.offset).toBe(2 ** 33);
  });

  it('indexes nothing for an empty list', async () => {
    await expect(indexChunks(database.db, [])).resolves.toBeUndefined();
  });
});
