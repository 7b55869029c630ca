import { createHash, randomBytes } from 'node:crypto';
import { cp, mkdtemp, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { testDatabase } from '../../test/harness.ts';
import { type Database, openDatabase } from '../db/database.ts';

/*
 * A migrated database for a unit test that needs one: a fresh PostgreSQL database when
 * HOLDFAST_TEST_DATABASE_URL is set (test/harness.ts), else PGlite in `dataDir`.
 *
 * Why a template: creating a PGlite cluster (initdb, in WebAssembly) takes 10-20 s on a small
 * machine, opening an existing one about 1 s. The first run creates a migrated cluster once in
 * the temp folder, keyed by the PGlite build and the migrations; later runs copy it and let
 * openDatabase apply any migration it lacks (none, with the key matching). Delete
 * `$TMPDIR/holdfast-pglite-template-*` to start over.
 */
export async function openTestDatabase(dataDir: string): Promise<Database & { drop(): Promise<void> }> {
  const t = await testDatabase();
  if (!t.url) await copyTemplate(dataDir);
  const database = await openDatabase({ url: t.url, dataDir });
  return {
    ...database,
    async drop() {
      await database.close();
      await t.drop();
    },
  };
}

const PREFIX = `holdfast-pglite-template-${process.getuid?.() ?? 'u'}-`;
const migrationsDir = fileURLToPath(new URL('../../migrations', import.meta.url));

async function templateKey(): Promise<string> {
  const h = createHash('sha256');
  // createRequire, not import.meta.resolve: vitest's module runner does not provide the latter.
  const pglite = createRequire(import.meta.url).resolve('@electric-sql/pglite');
  const st = await stat(pglite);
  h.update(`${pglite}\0${st.size}\0${st.mtimeMs}\0`);
  for (const entry of (await readdir(migrationsDir, { recursive: true, withFileTypes: true })).sort((a, b) =>
    path.join(a.parentPath, a.name).localeCompare(path.join(b.parentPath, b.name)),
  )) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    h.update(`${path.relative(migrationsDir, file)}\0`);
    h.update(await readFile(file));
  }
  return h.digest('hex').slice(0, 16);
}

async function copyTemplate(dataDir: string): Promise<void> {
  const template = path.join(os.tmpdir(), `${PREFIX}${await templateKey()}`);
  if (!(await exists(path.join(template, 'db')))) await createTemplate(template);
  await cp(path.join(template, 'db'), path.join(dataDir, 'db'), { recursive: true });
}

async function createTemplate(template: string): Promise<void> {
  const building = await mkdtemp(
    path.join(os.tmpdir(), `${PREFIX}building-${randomBytes(4).toString('hex')}-`),
  );
  try {
    const db = await openDatabase({ dataDir: building });
    await db.close(); // a clean shutdown: the copy opens without recovery
    await rename(building, template).catch(async (err: NodeJS.ErrnoException) => {
      // Another test process finished first: its template is as good as ours.
      if (err.code !== 'EEXIST' && err.code !== 'ENOTEMPTY') throw err;
    });
  } finally {
    await rm(building, { recursive: true, force: true });
  }
  // Templates of older PGlite builds or migrations are never used again.
  for (const name of await readdir(os.tmpdir())) {
    const old = path.join(os.tmpdir(), name);
    if (!name.startsWith(PREFIX) || old === template) continue;
    const st = await stat(old).catch(() => undefined);
    if (st && Date.now() - st.mtimeMs > 60 * 60_000) await rm(old, { recursive: true, force: true });
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}
