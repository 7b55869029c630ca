import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import v8 from 'node:v8';
import { fileURLToPath } from 'node:url';
import type { ExtractTablesWithRelations } from 'drizzle-orm';
import { drizzle as drizzleNodePg } from 'drizzle-orm/node-postgres';
import { migrate as migrateNodePg } from 'drizzle-orm/node-postgres/migrator';
import type { PgDatabase, PgQueryResultHKT, PgTransaction } from 'drizzle-orm/pg-core';
import pg from 'pg';
import { releaseMemory } from '../../lib/release-memory.ts';
import * as schema from './schema.ts';

export type Schema = typeof schema;
/** One type for both drivers: services never know which PostgreSQL they talk to. */
export type Db = PgDatabase<PgQueryResultHKT, Schema>;
export type Tx = PgTransaction<PgQueryResultHKT, Schema, ExtractTablesWithRelations<Schema>>;

export interface Database {
  db: Db;
  /** "postgres" for a server reached by URL, "pglite" for the embedded one. */
  driver: 'postgres' | 'pglite';
  close(): Promise<void>;
}

const migrationsFolder = fileURLToPath(new URL('../../migrations', import.meta.url));

/** Opens the metadata database and applies pending migrations. */
export async function openDatabase(opts: { url?: string; dataDir: string }): Promise<Database> {
  if (opts.url) {
    const pool = new pg.Pool({ connectionString: opts.url, max: 10 });
    // An idle client losing its connection must not crash the server; the pool replaces it.
    pool.on('error', () => {});
    const db = drizzleNodePg(pool, { schema });
    try {
      await migrateNodePg(db, { migrationsFolder });
    } catch (err) {
      await pool.end();
      throw new Error(`cannot open PostgreSQL database: ${(err as Error).message}`);
    }
    return { db: db as unknown as Db, driver: 'postgres', close: () => pool.end() };
  }
  // Loaded only when used: the embedded PostgreSQL is large and a server with a URL never needs it.
  baselineWasmOnly();
  const { PGlite } = await import('@electric-sql/pglite');
  const { drizzle: drizzlePglite } = await import('drizzle-orm/pglite');
  const { migrate: migratePglite } = await import('drizzle-orm/pglite/migrator');
  const dir = path.join(opts.dataDir, 'db');
  await mkdir(dir, { recursive: true });
  const open = async () => {
    const client = new PGlite(dir, { startParams: [...PGlite.defaultStartParams, ...PGLITE_SETTINGS] });
    const db = drizzlePglite(client, { schema });
    await migratePglite(db, { migrationsFolder });
    return { db: db as unknown as Db, driver: 'pglite' as const, close: () => client.close() };
  };
  if (existsSync(path.join(dir, 'PG_VERSION'))) return open();
  // Creating the database (initdb, in WebAssembly) leaves ~500 MiB behind in the instance that
  // did it, for as long as it stays open: the server works on a second one.
  await (await open()).close();
  const database = await open();
  releaseMemory(); // the first instance is garbage now
  return database;
}

/**
 * The embedded PostgreSQL is 9 MB of WebAssembly. V8 compiles it with its baseline compiler and
 * recompiles the functions that run often with its optimizing one, and both versions' code
 * stay: ~50 MiB more of a PGlite server's memory (measured: 173 vs 127 MiB for an open
 * database, 243 vs 198 MiB for an idle server, 379-404 vs 343-370 MiB peak in a full backup of
 * the bench tree), for queries that are ~10-20% faster on their own; a backup spends far less
 * of its time there. So WebAssembly in this process stays baseline-compiled. The flag is read
 * when a module is compiled, so it is set before PGlite's is.
 */
function baselineWasmOnly(): void {
  v8.setFlagsFromString('--liftoff-only');
}

/**
 * The embedded PostgreSQL's own buffer cache lives in its WebAssembly memory, which never
 * shrinks; PostgreSQL's default (128 MB) made a PGlite server ~100 MiB larger for no measured
 * gain, as the files underneath stay in the system's page cache anyway.
 */
const PGLITE_SETTINGS = ['-c', 'shared_buffers=16MB'];
