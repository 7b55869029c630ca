import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, rm, utimes } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { eq, inArray, sql } from 'drizzle-orm';
import pino, { type Logger } from 'pino';
import { encodeBlock } from '../../protocol/block-codec.ts';
import { blockHash } from '../../protocol/hash.ts';
import { indexChunks } from '../chunk-store/chunk-index.ts';
import { type ChunkLocation, ChunkStore } from '../chunk-store/chunk-store.ts';
import { openTestDatabase } from '../chunk-store/test-database.test-helpers.ts';
import type { Db } from '../db/database.ts';
import {
  agentChunks,
  agents,
  alerts,
  chunks,
  datasources,
  jobs,
  quarantinedChunks,
  recoveryPoints,
} from '../db/schema.ts';
import { ManifestStore } from '../manifest/manifest-store.ts';

/*
 * A real migrated database, a real chunk store and manifest store in a temp folder, and ways
 * to build what a backup would have left: blocks in packs with index and ownership rows,
 * recovery points with their manifests, jobs. Tests of one file share the database and start
 * each test from empty tables and a fresh store folder.
 */

export interface Fixture {
  db: Db;
  store: ChunkStore;
  manifests: ManifestStore;
  log: Logger;
  dir: string;
  agentId: string;
  /** A new datasource of the fixture's agent. */
  datasource(): Promise<string>;
  /** Stores these blocks in one new pack (one pack writer), indexed and owned by the agent. */
  storeBlocks(blocks: Buffer[], opts?: { compress?: boolean }): Promise<ChunkLocation[]>;
  /** A committed disk recovery point whose one file names these blocks; returns its id. */
  recoveryPoint(datasourceId: string, hashes: string[], opts?: { createdAt?: Date }): Promise<string>;
  /** Sets touched_at of these blocks to `ms` before now. */
  age(hashes: string[], ms: number): Promise<void>;
  /** Sets the mtime of every pack file (or these) to `ms` before now. */
  agePacks(ms: number, packs?: string[]): Promise<void>;
  /** Empties the tables and opens a fresh store folder. */
  reset(opts?: { gcGraceMs?: number }): Promise<void>;
  close(): Promise<void>;
}

export const block = (n = 20_000) => randomBytes(n);
/** Compressible, distinct. */
export const textBlock = (seed: string, n = 50_000) =>
  Buffer.from(`${seed}: all work and no play makes Jack a dull boy. `.repeat(Math.ceil(n / 40)).slice(0, n));
export const hex = (b: Buffer) => blockHash(b).toString('hex');

export async function openFixture(): Promise<Fixture> {
  const dbDir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-gc-db-'));
  const database = await openTestDatabase(dbDir);
  const { db } = database;
  const agentId = randomUUID();
  await db.insert(agents).values({ id: agentId, name: `a-${agentId.slice(0, 8)}`, secretHash: 'x' });
  const log = pino({ level: 'silent' });
  let dsCount = 0;

  const f: Fixture = {
    db,
    log,
    agentId,
    store: undefined as unknown as ChunkStore,
    manifests: undefined as unknown as ManifestStore,
    dir: '',
    async datasource() {
      const id = randomUUID();
      await db.insert(datasources).values({
        id,
        agentId,
        path: `/data/${++dsCount}-${id}`,
        kind: 'files',
        blockSize: 1024 * 1024,
      });
      return id;
    },
    async storeBlocks(blocks, opts = {}) {
      const w = f.store.newWriter();
      for (const b of blocks) {
        const { enc, data } = opts.compress === false ? { enc: 0, data: b } : encodeBlock(b);
        await w.append(blockHash(b), enc, data, b.length);
      }
      const locs = await w.flush();
      await w.close();
      await db.transaction(async (tx) => {
        await indexChunks(tx, locs);
        await tx
          .insert(agentChunks)
          .values(locs.map((l) => ({ agentId, hash: l.hash })))
          .onConflictDoNothing();
      });
      return locs;
    },
    async recoveryPoint(datasourceId, hashes, opts = {}) {
      const id = randomUUID();
      const w = await f.manifests.createWriter(id);
      await w.append([
        { type: 'dir', path: 'd', mode: 0o755, uid: 0, gid: 0, mtimeMs: 0 },
        {
          type: 'file',
          path: 'd/f',
          size: hashes.length,
          mode: 0o644,
          uid: 0,
          gid: 0,
          mtimeMs: 0,
          hashes: [...hashes.map((h) => Buffer.from(h, 'hex')), null],
        },
      ]);
      await w.commit();
      await db.insert(recoveryPoints).values({
        id,
        datasourceId,
        jobId: randomUUID(),
        kind: 'files',
        consistency: 'crash-consistent',
        bytes: 0,
        files: 1,
        blocks: hashes.length,
        ...(opts.createdAt ? { createdAt: opts.createdAt } : {}),
      });
      return id;
    },
    async age(hashes, ms) {
      if (hashes.length === 0) return;
      await db
        .update(chunks)
        .set({ touchedAt: sql`now() - make_interval(secs => ${ms / 1000})` })
        .where(inArray(chunks.hash, hashes));
    },
    async agePacks(ms, packs) {
      const ids = packs ?? (await db.selectDistinct({ pack: chunks.pack }).from(chunks)).map((r) => r.pack);
      const t = new Date(Date.now() - ms);
      for (const id of ids) await utimes(f.store.pathOf(id), t, t).catch(() => {});
    },
    async reset(opts = {}) {
      await f.store?.close();
      if (f.dir) await rm(f.dir, { recursive: true, force: true });
      f.dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-gc-store-'));
      f.store = await ChunkStore.open(path.join(f.dir, 'store'), { gcGraceMs: opts.gcGraceMs ?? 0 });
      f.manifests = await ManifestStore.open(f.dir);
      for (const t of [agentChunks, chunks, quarantinedChunks, recoveryPoints, jobs, alerts])
        await db.delete(t);
      await db.delete(datasources).where(eq(datasources.agentId, agentId));
    },
    async close() {
      await f.store?.close();
      if (f.dir) await rm(f.dir, { recursive: true, force: true });
      await database.drop();
      await rm(dbDir, { recursive: true, force: true });
    },
  };
  await f.reset();
  return f;
}
