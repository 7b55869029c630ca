import { rm } from 'node:fs/promises';
import { sql } from 'drizzle-orm';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir } from '../../test/harness.ts';
import { openDatabase } from './database.ts';
import { agents } from './schema.ts';

describe('the embedded database (PGlite)', () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('is created, migrated and opened again with a small buffer cache', async () => {
    const dataDir = await tempDir('pglite');
    dirs.push(dataDir);
    const first = await openDatabase({ dataDir });
    try {
      expect(first.driver).toBe('pglite');
      // The instance that ran initdb was closed: this one works and has the schema.
      await first.db.insert(agents).values({ id: 'a1', name: 'one', secretHash: 'h1' });
      const shown = (await first.db.execute(sql`show shared_buffers`)) as {
        rows: { shared_buffers: string }[];
      };
      expect(shown.rows[0]?.shared_buffers).toBe('16MB');
    } finally {
      await first.close();
    }
    const again = await openDatabase({ dataDir });
    try {
      expect((await again.db.select().from(agents)).map((a) => a.name)).toEqual(['one']);
    } finally {
      await again.close();
    }
  });
});
