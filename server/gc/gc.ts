import { readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { and, asc, eq, gt, inArray, lt, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { fsyncDir } from '../../lib/durable-fs.ts';
import { hashHex } from '../../protocol/hash.ts';
import type { ChunkLocation, ChunkStore } from '../chunk-store/chunk-store.ts';
import { touchAfterMsOf } from '../chunk-store/chunk-touch.ts';
import { RECORD_HEADER_BYTES, PACK_MAGIC } from '../chunk-store/pack-format.ts';
import type { Db } from '../db/database.ts';
import { agentChunks, chunks, recoveryPoints } from '../db/schema.ts';
import { AppError } from '../errors.ts';
import { ManifestError, type ManifestStore } from '../manifest/manifest-store.ts';

/*
 * Garbage collection of the disk chunk store: removes the blocks no recovery point names, then
 * gives their space back by deleting or rewriting pack files, and removes orphan manifests.
 * It runs beside backups and restores. docs/chunk-store.md ("Garbage collection") has the
 * whole argument; in short:
 *
 * Cut-off. T1 is the database's now() when the collection starts. The cut-off is
 *     min(T1, startedAt of the oldest backup or consistency check that is running, or
 *         interrupted and queued to resume) - grace
 * and a block is swept only if no committed recovery point's manifest names it AND its
 * touched_at is strictly before the cut-off. The grace is never shorter than the backups'
 * touch interval (half the store's configured grace, chunk-touch.ts).
 *
 * Why a block a backup counts on is never swept:
 * - A block a backup stores gets touched_at = now() of the flush that indexes it. That backup
 *   was running (or interrupted and waiting to resume) when the collection read the jobs, so
 *   the cut-off is at or before its start, or it started after T1; either way the flush came
 *   later, and touched_at >= cut-off.
 * - A block a backup reuses (the agent owns it, or proves possession of a block the store has)
 *   is touched when the backup decides to reuse it: UPDATE ... RETURNING refreshes rows older
 *   than the touch interval, and leaves fresher rows alone. A refreshed row has touched_at >=
 *   the backup's start, or >= T1. A row left alone was touched after (reuse time - touch
 *   interval) >= (backup start or T1) - grace >= cut-off. Either way it is not swept.
 * - A touch and the sweep of the same row are ordered by its row lock. If the touch commits
 *   first, the sweep re-checks touched_at on the new row version and keeps it. If the sweep
 *   commits first, the touch's UPDATE ... RETURNING (and its follow-up SELECT) finds no row, so
 *   the backup treats the block as absent and asks the agent to upload it again. Both lock rows
 *   in hash order, so they never deadlock.
 * - A recovery point that committed before the collection read the jobs is in the manifest
 *   list read afterwards (jobs first, recovery points second), so its blocks are marked.
 *
 * Space. After the sweep, a pack with no index row left is deleted; a pack whose live records
 * are less than half of it is rewritten: its live blocks are read and checked, appended to new
 * packs (PackWriter, fsync), their index rows moved in one transaction (WHERE pack = old AND
 * offset = old), and the old pack is moved to store/trash, which the NEXT collection empties,
 * so a restore that looked up the old location a moment before still reads it there. A pack a
 * pack writer still holds, or modified at or after the cut-off, is never touched: a running
 * backup may be appending to it, or about to index what it appended.
 */

export interface GcDeps {
  db: Db;
  store: ChunkStore;
  manifests: ManifestStore;
  log: Logger;
}

export interface GcOptions {
  /** Blocks touched within this time before the cut-off are kept even if unreferenced. */
  graceMs: number;
  /** Report what would be freed; change nothing. */
  dryRun?: boolean;
  /** Rewrite packs whose live records are less than this fraction of the pack (default 0.5). */
  rewriteBelow?: number;
}

export interface GcReport {
  dryRun: boolean;
  /** The grace actually used: the requested one, raised to the backups' touch interval if shorter. */
  graceMs: number;
  /** Database time at the start, and the cut-off derived from it (ISO 8601). */
  startedAt: string;
  cutoff: string;
  recoveryPointsMarked: number;
  referencedBlocks: number;
  /** Index rows removed (or that would be), and the stored bytes of those blocks. */
  chunksFreed: number;
  bytesFreed: number;
  /** Packs with no live block, deleted. */
  packsDeleted: number;
  /** Packs mostly dead, their live blocks copied into new packs and the old pack trashed. */
  packsRewritten: number;
  blocksMoved: number;
  bytesMoved: number;
  /** Disk space given back by deleted and rewritten packs (rewritten ones once the trash is emptied). */
  packBytesReclaimed: number;
  /** Packs left alone because a writer holds them or they changed at or after the cut-off. */
  packsSkippedRecent: number;
  /** Packs not rewritten because a live block in them failed its check (run verify). */
  packsSkippedDamaged: number;
  /** Packs of the previous collection's rewrites, deleted from the trash. */
  trashEmptied: number;
  trashBytesFreed: number;
  orphanManifestsRemoved: number;
  durationMs: number;
}

const BATCH = 1000;
/** Pack mtimes are local time, the cut-off database time: allow for the clock difference's error. */
const MTIME_MARGIN_MS = 1000;
const DEFAULT_REWRITE_BELOW = 0.5;
const PACK_FILE = /^([0-9a-f]{32})\.pack$/;

/** One collection per store at a time (in this process; a store folder belongs to one process). */
const collecting = new WeakSet<ChunkStore>();

export async function collectGarbage(deps: GcDeps, opts: GcOptions): Promise<GcReport> {
  const { db, store, log } = deps;
  if (!Number.isFinite(opts.graceMs) || opts.graceMs < 0)
    throw new AppError('INVALID_INPUT', `grace must be a duration of 0 or more, got ${opts.graceMs}`);
  if (collecting.has(store)) throw new AppError('CONFLICT', 'garbage collection is already running');
  collecting.add(store);
  const t0 = performance.now();
  try {
    const dryRun = Boolean(opts.dryRun);
    const graceMs = Math.max(opts.graceMs, touchAfterMsOf(store.gcGraceMs));
    const report: GcReport = {
      dryRun,
      graceMs,
      startedAt: '',
      cutoff: '',
      recoveryPointsMarked: 0,
      referencedBlocks: 0,
      chunksFreed: 0,
      bytesFreed: 0,
      packsDeleted: 0,
      packsRewritten: 0,
      blocksMoved: 0,
      bytesMoved: 0,
      packBytesReclaimed: 0,
      packsSkippedRecent: 0,
      packsSkippedDamaged: 0,
      trashEmptied: 0,
      trashBytesFreed: 0,
      orphanManifestsRemoved: 0,
      durationMs: 0,
    };

    // The previous collection's rewritten packs: whoever looked them up then is long done.
    if (!dryRun) await emptyTrash(store, report);

    // T1 and the oldest backup that counts on its blocks, read before the recovery points.
    const clock = await cutoffOf(db, graceMs);
    report.startedAt = new Date(clock.nowMs).toISOString();
    report.cutoff = new Date(clock.cutoffMs).toISOString();

    const referenced = await mark(deps, report);
    const swept = await sweep(db, referenced, clock.cutoffMs, dryRun, report);
    referenced.clear();
    await reclaimPacks(
      deps,
      clock.localCutoffMs,
      swept,
      dryRun,
      opts.rewriteBelow ?? DEFAULT_REWRITE_BELOW,
      report,
    );
    await removeOrphanManifests(deps, clock.localCutoffMs, dryRun, report);

    report.durationMs = Math.round(performance.now() - t0);
    log.info({ gc: report }, dryRun ? 'garbage collection (dry run) done' : 'garbage collection done');
    return report;
  } finally {
    collecting.delete(store);
  }
}

async function cutoffOf(db: Db, graceMs: number) {
  const localBefore = Date.now();
  // One statement: now() and the jobs are read together.
  const result = (await db.execute(sql`
    select floor(extract(epoch from now()) * 1000)::float8 as now_ms,
      (select floor(extract(epoch from min(coalesce(j.started_at, j.created_at))) * 1000)::float8
        from jobs j
        where j.type in ('backup', 'consistency-check')
          and (j.state = 'running' or (j.state = 'queued' and j.interrupted_at is not null))) as oldest_ms`)) as unknown as {
    rows: { now_ms: number | string; oldest_ms: number | string | null }[];
  };
  const row = { nowMs: result.rows[0]!.now_ms, oldestMs: result.rows[0]!.oldest_ms };
  const nowMs = Number(row.nowMs);
  const oldestMs = row.oldestMs === null ? nowMs : Number(row.oldestMs);
  const cutoffMs = Math.min(nowMs, oldestMs) - graceMs;
  // The same instant on this machine's clock, for pack and manifest mtimes; erring early.
  const localCutoffMs = cutoffMs - (nowMs - localBefore) - MTIME_MARGIN_MS;
  return { nowMs, cutoffMs, localCutoffMs };
}

const cutoffSql = (cutoffMs: number) => sql`${new Date(cutoffMs).toISOString()}::timestamptz`;

/** Every block named by the manifest of a committed disk recovery point. */
async function mark(deps: GcDeps, report: GcReport): Promise<Set<string>> {
  const { db, manifests } = deps;
  const referenced = new Set<string>();
  const rps = await db
    .select({ id: recoveryPoints.id })
    .from(recoveryPoints)
    .where(eq(recoveryPoints.tier, 'disk'));
  for (const rp of rps) {
    try {
      for await (const batch of manifests.read(rp.id)) {
        for (const e of batch) {
          if (e.type !== 'file') continue;
          for (const h of e.hashes) if (h) referenced.add(hashHex(h));
        }
      }
    } catch (err) {
      // Pruned meanwhile (the row goes first, then the manifest): nothing to keep for it.
      const [still] = await db
        .select({ id: recoveryPoints.id })
        .from(recoveryPoints)
        .where(eq(recoveryPoints.id, rp.id));
      if (!still) continue;
      // What an unreadable manifest names is unknown: removing anything could break it further.
      const what = err instanceof ManifestError ? `${err.code}: ${err.message}` : (err as Error).message;
      throw new Error(
        `garbage collection stopped before removing anything: cannot read the manifest of recovery point ${rp.id} (${what}); delete that recovery point or restore its manifest`,
      );
    }
    report.recoveryPointsMarked += 1;
  }
  report.referencedBlocks = referenced.size;
  return referenced;
}

interface Swept {
  /** Per pack: index rows and stored bytes removed (or that would be, in a dry run). */
  byPack: Map<string, { count: number; bytes: number }>;
}

/**
 * Deletes, in one transaction, the index rows (and ownership rows) of unreferenced blocks
 * touched before the cut-off. The DELETE re-checks touched_at under the row lock, so a block a
 * backup touched since it was listed stays.
 */
async function sweep(
  db: Db,
  referenced: Set<string>,
  cutoffMs: number,
  dryRun: boolean,
  report: GcReport,
): Promise<Swept> {
  const cutoff = cutoffSql(cutoffMs);
  const candidates: { hash: string; pack: string; storedSize: number }[] = [];
  let after = '';
  for (;;) {
    const rows = await db
      .select({ hash: chunks.hash, pack: chunks.pack, storedSize: chunks.storedSize })
      .from(chunks)
      .where(and(gt(chunks.hash, after), lt(chunks.touchedAt, cutoff)))
      .orderBy(asc(chunks.hash))
      .limit(5000);
    for (const r of rows) if (!referenced.has(r.hash)) candidates.push(r);
    if (rows.length < 5000) break;
    after = rows[rows.length - 1]!.hash;
  }
  const byPack = new Map<string, { count: number; bytes: number }>();
  const count = (pack: string, bytes: number) => {
    const p = byPack.get(pack) ?? { count: 0, bytes: 0 };
    p.count += 1;
    p.bytes += bytes;
    byPack.set(pack, p);
    report.chunksFreed += 1;
    report.bytesFreed += bytes;
  };
  if (dryRun) {
    for (const c of candidates) count(c.pack, c.storedSize);
    return { byPack };
  }
  if (candidates.length === 0) return { byPack };
  await db.transaction(async (tx) => {
    for (let i = 0; i < candidates.length; i += BATCH) {
      const batch = candidates.slice(i, i + BATCH).map((c) => c.hash);
      // Rows locked in hash order (as touches lock them), re-checked under the lock.
      const locked = tx
        .select({ hash: chunks.hash })
        .from(chunks)
        .where(and(inArray(chunks.hash, batch), lt(chunks.touchedAt, cutoff)))
        .orderBy(asc(chunks.hash))
        .for('update');
      const gone = await tx
        .delete(chunks)
        .where(inArray(chunks.hash, locked))
        .returning({ hash: chunks.hash, pack: chunks.pack, storedSize: chunks.storedSize });
      if (gone.length === 0) continue;
      // An ownership row never outlives its block, or an agent could name a block that is gone.
      await tx.delete(agentChunks).where(
        inArray(
          agentChunks.hash,
          gone.map((g) => g.hash),
        ),
      );
      for (const g of gone) count(g.pack, g.storedSize);
    }
  });
  return { byPack };
}

async function emptyTrash(store: ChunkStore, report: GcReport): Promise<void> {
  let names: string[];
  try {
    names = await readdir(store.trashDir);
  } catch {
    return;
  }
  for (const name of names) {
    const m = PACK_FILE.exec(name);
    const file = path.join(store.trashDir, name);
    const st = await stat(file).catch(() => undefined);
    await rm(file, { force: true });
    if (m) store.forget(m[1]!);
    report.trashEmptied += 1;
    report.trashBytesFreed += st?.size ?? 0;
  }
  if (names.length > 0) await fsyncDir(store.trashDir);
}

interface PackFile {
  id: string;
  file: string;
  size: number;
  mtimeMs: number;
}

async function listPacks(store: ChunkStore): Promise<PackFile[]> {
  const out: PackFile[] = [];
  for (const prefix of await readdir(store.packsDir)) {
    if (!/^[0-9a-f]{2}$/.test(prefix)) continue;
    const dir = path.join(store.packsDir, prefix);
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const m = PACK_FILE.exec(name);
      if (!m) continue;
      const file = path.join(dir, name);
      const st = await stat(file).catch(() => undefined);
      if (st) out.push({ id: m[1]!, file, size: st.size, mtimeMs: st.mtimeMs });
    }
  }
  return out;
}

async function reclaimPacks(
  deps: GcDeps,
  localCutoffMs: number,
  swept: Swept,
  dryRun: boolean,
  rewriteBelow: number,
  report: GcReport,
): Promise<void> {
  const { db, store, log } = deps;
  const packs = await listPacks(store);
  const live = new Map<string, { count: number; bytes: number }>();
  const rows = await db
    .select({
      pack: chunks.pack,
      count: sql<number>`count(*)::int`,
      bytes: sql<number>`coalesce(sum(${chunks.storedSize}), 0)::float8`,
    })
    .from(chunks)
    .groupBy(chunks.pack);
  for (const r of rows) live.set(r.pack, { count: Number(r.count), bytes: Number(r.bytes) });
  if (dryRun) {
    // What the sweep would have removed is not live any more.
    for (const [pack, s] of swept.byPack) {
      const l = live.get(pack);
      if (l) live.set(pack, { count: l.count - s.count, bytes: l.bytes - s.bytes });
    }
  }

  const toDelete: PackFile[] = [];
  const toRewrite: PackFile[] = [];
  for (const p of packs) {
    if (store.isWriting(p.id) || p.mtimeMs >= localCutoffMs) {
      report.packsSkippedRecent += 1;
      continue;
    }
    const l = live.get(p.id);
    if (!l || l.count <= 0) toDelete.push(p);
    else {
      const liveBytes = l.bytes + l.count * RECORD_HEADER_BYTES;
      if (liveBytes < rewriteBelow * (p.size - PACK_MAGIC.length)) toRewrite.push(p);
    }
  }

  if (dryRun) {
    report.packsDeleted = toDelete.length;
    report.packsRewritten = toRewrite.length;
    for (const p of toDelete) report.packBytesReclaimed += p.size;
    for (const p of toRewrite) {
      const l = live.get(p.id)!;
      report.blocksMoved += l.count;
      report.bytesMoved += l.bytes;
      report.packBytesReclaimed += p.size - (l.bytes + l.count * RECORD_HEADER_BYTES);
    }
    return;
  }

  const dirs = new Set<string>();
  for (const p of toDelete) {
    // No index row points into it (re-checked now): nobody can be reading it.
    const [n] = await db.select({ n: sql<number>`count(*)::int` }).from(chunks).where(eq(chunks.pack, p.id));
    if (Number(n?.n ?? 0) > 0) continue;
    await rm(p.file, { force: true });
    store.forget(p.id);
    dirs.add(path.dirname(p.file));
    report.packsDeleted += 1;
    report.packBytesReclaimed += p.size;
  }
  for (const dir of dirs) await fsyncDir(dir);

  if (toRewrite.length === 0) return;
  const writer = store.newWriter();
  try {
    for (const p of toRewrite) {
      const moved = await rewritePack(deps, writer, p);
      if (moved === undefined) {
        report.packsSkippedDamaged += 1;
        continue;
      }
      if (moved === null) continue;
      report.packsRewritten += 1;
      report.blocksMoved += moved.blocks;
      report.bytesMoved += moved.bytes;
      report.packBytesReclaimed += p.size - (moved.bytes + moved.blocks * RECORD_HEADER_BYTES);
    }
  } catch (err) {
    log.error({ err }, 'garbage collection: rewriting packs failed');
    throw err;
  } finally {
    await writer.close();
  }
}

/**
 * Copies the live blocks of one pack into the writer's packs, moves their index rows, and puts
 * the old pack in the trash. Undefined when a live block fails its check (the pack stays for
 * verify to deal with), null when the rows changed under it (tried again next time).
 */
async function rewritePack(
  deps: GcDeps,
  writer: ReturnType<ChunkStore['newWriter']>,
  p: PackFile,
): Promise<{ blocks: number; bytes: number } | undefined | null> {
  const { db, store, log } = deps;
  const rows: ChunkLocation[] = await db
    .select({
      hash: chunks.hash,
      pack: chunks.pack,
      offset: chunks.offset,
      size: chunks.size,
      storedSize: chunks.storedSize,
      encoding: chunks.encoding,
    })
    .from(chunks)
    .where(eq(chunks.pack, p.id))
    .orderBy(asc(chunks.offset));
  // Read and check everything first: a damaged block is not copied, and the pack is not touched.
  const payloads: Buffer[] = [];
  for (const loc of rows) {
    try {
      const stored = await store.readStored(loc);
      store.checkStored(loc, stored);
      payloads.push(stored);
    } catch (err) {
      log.warn(
        { pack: p.id, hash: loc.hash, err: (err as Error).message },
        'garbage collection: not rewriting a pack with a damaged block (run verify)',
      );
      return undefined;
    }
  }
  await writer.appendMany(
    rows.map((loc, i) => ({
      hash: Buffer.from(loc.hash, 'hex'),
      encoding: loc.encoding,
      payload: payloads[i]!,
      size: loc.size,
    })),
  );
  const copies = new Map((await writer.flush()).map((l) => [l.hash, l]));

  const sorted = [...rows].sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : 0));
  const committed = await db
    .transaction(async (tx) => {
      // Lock the pack's rows in hash order, like touches and the sweep.
      await tx
        .select({ hash: chunks.hash })
        .from(chunks)
        .where(eq(chunks.pack, p.id))
        .orderBy(asc(chunks.hash))
        .for('update');
      for (const loc of sorted) {
        const to = copies.get(loc.hash)!;
        await tx
          .update(chunks)
          .set({ pack: to.pack, offset: to.offset })
          .where(and(eq(chunks.hash, loc.hash), eq(chunks.pack, p.id), eq(chunks.offset, loc.offset)));
      }
      const [left] = await tx
        .select({ n: sql<number>`count(*)::int` })
        .from(chunks)
        .where(eq(chunks.pack, p.id));
      if (Number(left?.n ?? 0) > 0) throw new PackChanged();
      return true;
    })
    .catch((err) => {
      if (err instanceof PackChanged) return false;
      throw err;
    });
  if (!committed) {
    log.warn({ pack: p.id }, 'garbage collection: pack gained index rows while being rewritten; kept');
    return null;
  }
  // Not deleted yet: a restore that looked the old location up a moment ago still reads it.
  await rename(p.file, store.trashPathOf(p.id));
  await fsyncDir(store.trashDir);
  await fsyncDir(path.dirname(p.file));
  return { blocks: rows.length, bytes: rows.reduce((n, r) => n + r.storedSize, 0) };
}

class PackChanged extends Error {}

/** Manifests without a recovery point row (a crash between manifest commit and row insert). */
async function removeOrphanManifests(
  deps: GcDeps,
  localCutoffMs: number,
  dryRun: boolean,
  report: GcReport,
): Promise<void> {
  const { db, manifests } = deps;
  const files: { id: string; mtimeMs: number }[] = [];
  for (const name of await readdir(manifests.dir)) {
    const m = /^([A-Za-z0-9-]{1,100})\.manifest$/.exec(name);
    if (!m) continue;
    const st = await stat(path.join(manifests.dir, name)).catch(() => undefined);
    // A manifest written after the cut-off may belong to a backup about to insert its row.
    if (st?.isFile() && st.mtimeMs < localCutoffMs) files.push({ id: m[1]!, mtimeMs: st.mtimeMs });
  }
  for (let i = 0; i < files.length; i += BATCH) {
    const batch = files.slice(i, i + BATCH);
    const rows = await db
      .select({ id: recoveryPoints.id })
      .from(recoveryPoints)
      .where(
        inArray(
          recoveryPoints.id,
          batch.map((f) => f.id),
        ),
      );
    const known = new Set(rows.map((r) => r.id));
    for (const f of batch) {
      if (known.has(f.id)) continue;
      if (!dryRun) await manifests.remove(f.id);
      report.orphanManifestsRemoved += 1;
    }
  }
}
