import { randomUUID } from 'node:crypto';
import { and, asc, desc, eq, inArray, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { hashHex } from '../../protocol/hash.ts';
import { raiseAlert, resolveAlert } from '../alerts/alerts.ts';
import { locateChunks } from '../chunk-store/chunk-index.ts';
import { type ChunkLocation, type ChunkStore, ChunkStoreError } from '../chunk-store/chunk-store.ts';
import type { Db } from '../db/database.ts';
import { agentChunks, chunks, datasources, quarantinedChunks, recoveryPoints } from '../db/schema.ts';
import { AppError } from '../errors.ts';
import { ManifestError, type ManifestStore } from '../manifest/manifest-store.ts';

/*
 * Verify: re-reads and re-hashes every distinct block that the chosen disk recovery points name
 * (each block once, however many points share it). A block that is damaged (does not decode or
 * does not match its hash), missing (its pack or its bytes are gone) or unreadable is
 * quarantined: its `chunks` row moves to `quarantined_chunks`, with the reason, and its
 * ownership rows go too. From then on no ownership check finds it, so the next backup of any
 * datasource holding that data asks its agent for the block again and stores a good copy: the
 * store heals itself.
 *
 * Every disk recovery point naming a quarantined block (of any datasource, verified now or not)
 * is marked `corrupt`: it is never the base of an incremental backup, and restoring it fails at
 * the damaged block. A point verified clean gets `verified_at` and status `ok`, which is also how
 * a corrupt point whose blocks were all stored again (healed) becomes `ok` on its next verify.
 * A datasource whose newest point is corrupt becomes `inconsistent` (a consistency check, see
 * consistency.ts, makes it consistent again); it gets a critical `verify-corruption` alert and a
 * `replica-inconsistent` warning.
 *
 * CPU: decoding and hashing run on the main thread, block by block, between reads. Measured on
 * a 2-core machine: SHA-256 at ~2 GB/s and zstd decoding at ~2.8 GB/s per core, so a 1 MiB
 * block costs under a millisecond of the event loop and a verify is bound by disk reads; the
 * reads are issued `concurrency` at a time.
 */

export interface VerifyDeps {
  db: Db;
  store: ChunkStore;
  manifests: ManifestStore;
  log: Logger;
}

export interface VerifyOptions {
  /** The recovery points to verify (disk tier); default all of them. */
  rpIds?: string[];
  /** Block reads in flight (default 4). */
  concurrency?: number;
}

export interface CorruptBlock {
  hash: string;
  /** Where the index said it was; null when it was not in the index at all. */
  pack: string | null;
  reason: string;
}

export interface CorruptRecoveryPoint {
  id: string;
  datasourceId: string;
  /** Named a damaged or missing block, or its manifest could not be read. */
  reason: string;
}

export interface VerifyReport {
  rpsChecked: number;
  /** Distinct blocks read and checked, and their stored bytes. */
  blocksChecked: number;
  bytesChecked: number;
  /** Damaged, missing or already quarantined blocks the verified points name. */
  corruptBlocks: CorruptBlock[];
  /** Of those, the blocks taken out of the index by this run. */
  quarantined: number;
  /** Points found or marked corrupt by this run (verified ones, and others naming a block it quarantined). */
  corruptRps: CorruptRecoveryPoint[];
  /** Points that were corrupt and verified clean now (their blocks were stored again). */
  healedRps: string[];
  /** Datasources whose newest point is corrupt after this run. */
  inconsistentDatasources: string[];
  durationMs: number;
}

const BATCH = 1000;
const DEFAULT_CONCURRENCY = 4;

/** Alerts about a datasource name it this way. */
const alertSubjectOf = (datasourceId: string) => `datasource:${datasourceId}`;

type RpRow = { id: string; datasourceId: string; status: 'ok' | 'corrupt' };

export async function verifyRecoveryPoints(
  deps: VerifyDeps,
  opts: VerifyOptions = {},
): Promise<VerifyReport> {
  const { db, store, log } = deps;
  const t0 = performance.now();
  const chosen = await chooseRecoveryPoints(db, opts.rpIds);
  const report: VerifyReport = {
    rpsChecked: chosen.length,
    blocksChecked: 0,
    bytesChecked: 0,
    corruptBlocks: [],
    quarantined: 0,
    corruptRps: [],
    healedRps: [],
    inconsistentDatasources: [],
    durationMs: 0,
  };

  // 1. Every distinct block the chosen points name; a manifest that cannot be read is itself damage.
  const manifestFailures = new Map<string, string>();
  const distinct = new Set<string>();
  for (const rp of chosen) {
    const failure = await forEachHash(deps.manifests, rp.id, (h) => distinct.add(h));
    if (failure) manifestFailures.set(rp.id, failure);
  }

  // 2. Blocks the index no longer has (quarantined before, or never stored) are missing.
  const located = await locateChunks(db, [...distinct]);
  const bad = new Map<string, CorruptBlock>();
  const absent = [...distinct].filter((h) => !located.has(h));
  for (const [hash, reason] of await quarantineReasons(db, absent)) {
    bad.set(hash, { hash, pack: null, reason });
  }
  distinct.clear();

  // 3. Read and check the others, pack by pack, with fresh file handles (a pack deleted behind
  //    the server's back must not be read through a handle opened before).
  const locs = [...located.values()].sort((a, b) =>
    a.pack === b.pack ? a.offset - b.offset : a.pack < b.pack ? -1 : 1,
  );
  for (const pack of new Set(locs.map((l) => l.pack))) store.forget(pack);
  const damaged: { loc: ChunkLocation; reason: string }[] = [];
  let next = 0;
  const readOne = async () => {
    while (next < locs.length) {
      const loc = locs[next++]!;
      try {
        await store.readVerified(loc);
        report.blocksChecked += 1;
        report.bytesChecked += loc.storedSize;
      } catch (err) {
        report.blocksChecked += 1;
        const code = err instanceof ChunkStoreError ? err.code : 'STORE_IO';
        damaged.push({ loc, reason: `${code}: ${(err as Error).message}` });
      }
    }
  };
  await Promise.all(
    Array.from({ length: Math.max(1, opts.concurrency ?? DEFAULT_CONCURRENCY) }, () => readOne()),
  );

  // 4. Quarantine what is damaged, in one transaction.
  const quarantined = await quarantine(db, damaged);
  for (const q of quarantined) bad.set(q.hash, { hash: q.hash, pack: q.pack, reason: q.reason });
  report.quarantined = quarantined.length;
  report.corruptBlocks = [...bad.values()].sort((a, b) => (a.hash < b.hash ? -1 : 1));
  if (quarantined.length > 0)
    log.error({ quarantined: quarantined.length }, 'verify quarantined damaged or missing blocks');

  // 5. Which points are corrupt: the verified ones naming any bad block (or with an unreadable
  //    manifest), and every other disk point naming a block quarantined now.
  const newlyQuarantined = new Set(quarantined.map((q) => q.hash));
  const corrupt = new Map<string, CorruptRecoveryPoint>();
  const chosenIds = new Set(chosen.map((r) => r.id));
  for (const rp of chosen) {
    const failure = manifestFailures.get(rp.id);
    if (failure) {
      corrupt.set(rp.id, { id: rp.id, datasourceId: rp.datasourceId, reason: failure });
      continue;
    }
    if (bad.size === 0) continue;
    const hit = await firstHit(deps.manifests, rp.id, bad);
    if (hit) corrupt.set(rp.id, { id: rp.id, datasourceId: rp.datasourceId, reason: hit });
  }
  if (newlyQuarantined.size > 0) {
    const others = (await allDiskPoints(db)).filter((r) => !chosenIds.has(r.id));
    for (const rp of others) {
      const hit = await firstHit(deps.manifests, rp.id, newlyQuarantined);
      if (hit) corrupt.set(rp.id, { id: rp.id, datasourceId: rp.datasourceId, reason: hit });
    }
  }
  report.corruptRps = [...corrupt.values()];

  // 6. Record it: status and verifiedAt, replica state, alerts.
  const clean = chosen.filter((r) => !corrupt.has(r.id));
  report.healedRps = clean.filter((r) => r.status === 'corrupt').map((r) => r.id);
  await db.transaction(async (tx) => {
    for (let i = 0; i < clean.length; i += BATCH) {
      await tx
        .update(recoveryPoints)
        .set({ status: 'ok', verifiedAt: sql`now()` })
        .where(
          inArray(
            recoveryPoints.id,
            clean.slice(i, i + BATCH).map((r) => r.id),
          ),
        );
    }
    const ids = [...corrupt.keys()];
    for (let i = 0; i < ids.length; i += BATCH) {
      const batch = ids.slice(i, i + BATCH);
      await tx.update(recoveryPoints).set({ status: 'corrupt' }).where(inArray(recoveryPoints.id, batch));
      // Verified (with this result) only if it was among the chosen points.
      const verified = batch.filter((id) => chosenIds.has(id));
      if (verified.length > 0)
        await tx
          .update(recoveryPoints)
          .set({ verifiedAt: sql`now()` })
          .where(inArray(recoveryPoints.id, verified));
    }
  });

  const byDatasource = new Map<string, CorruptRecoveryPoint[]>();
  for (const c of corrupt.values())
    byDatasource.set(c.datasourceId, [...(byDatasource.get(c.datasourceId) ?? []), c]);
  for (const [dsId, rps] of byDatasource) {
    const subject = alertSubjectOf(dsId);
    await raiseAlert(db, {
      kind: 'verify-corruption',
      severity: 'critical',
      subject,
      message:
        `verify found ${rps.length} corrupt recovery point(s) (${rps
          .slice(0, 5)
          .map((r) => r.id)
          .join(', ')}${rps.length > 5 ? ', ...' : ''}): ${rps[0]!.reason}. ` +
        'Damaged blocks were quarantined; the next backup sends them again.',
    });
    const newest = await newestDiskPoint(db, dsId);
    if (newest && corrupt.has(newest.id)) {
      await db.update(datasources).set({ replicaState: 'inconsistent' }).where(eq(datasources.id, dsId));
      await raiseAlert(db, {
        kind: 'replica-inconsistent',
        severity: 'warning',
        subject,
        message: `the newest recovery point ${newest.id} is corrupt: run a consistency check (a full re-read backup) to repair the replica`,
      });
      report.inconsistentDatasources.push(dsId);
    }
  }
  // A datasource whose points all verified clean again has nothing corrupt left to alert about.
  const healedDs = new Set(chosen.filter((r) => report.healedRps.includes(r.id)).map((r) => r.datasourceId));
  for (const dsId of healedDs) {
    if (byDatasource.has(dsId)) continue;
    const [left] = await db
      .select({ n: sql<number>`count(*)::int` })
      .from(recoveryPoints)
      .where(
        and(
          eq(recoveryPoints.datasourceId, dsId),
          eq(recoveryPoints.tier, 'disk'),
          eq(recoveryPoints.status, 'corrupt'),
        ),
      );
    if (Number(left?.n ?? 0) === 0) await resolveAlert(db, 'verify-corruption', alertSubjectOf(dsId));
  }

  report.durationMs = Math.round(performance.now() - t0);
  log.info(
    {
      rpsChecked: report.rpsChecked,
      blocksChecked: report.blocksChecked,
      bytesChecked: report.bytesChecked,
      corruptBlocks: report.corruptBlocks.length,
      quarantined: report.quarantined,
      corruptRps: report.corruptRps.length,
      healedRps: report.healedRps.length,
      durationMs: report.durationMs,
    },
    'verify done',
  );
  return report;
}

/**
 * Verifies the corrupt disk points (of one datasource, or all) whose blocks are all in the
 * index again (stored anew by later backups): they become `ok` if every block checks out.
 * Points still missing a block are not read at all, so calling this after every backup is
 * cheap. Undefined when no point qualified.
 */
export async function recheckCorruptRecoveryPoints(
  deps: VerifyDeps,
  opts: { datasourceId?: string } = {},
): Promise<VerifyReport | undefined> {
  const rows = await deps.db
    .select({ id: recoveryPoints.id })
    .from(recoveryPoints)
    .where(
      and(
        eq(recoveryPoints.tier, 'disk'),
        eq(recoveryPoints.status, 'corrupt'),
        opts.datasourceId ? eq(recoveryPoints.datasourceId, opts.datasourceId) : undefined,
      ),
    );
  const whole: string[] = [];
  for (const rp of rows) {
    const hashes = new Set<string>();
    if (await forEachHash(deps.manifests, rp.id, (h) => hashes.add(h))) continue;
    if ((await locateChunks(deps.db, [...hashes])).size === hashes.size) whole.push(rp.id);
  }
  if (whole.length === 0) return undefined;
  return verifyRecoveryPoints(deps, { rpIds: whole });
}

/**
 * For the job runner, when a backup of a datasource succeeded: resolves its `verify-corruption`
 * alert once its newest point names no block that is quarantined and not stored again. Reads
 * no block; corrupt older points become `ok` on their next verify (recheckCorruptRecoveryPoints).
 */
export async function onBackupSucceeded(
  deps: Pick<VerifyDeps, 'db' | 'manifests'>,
  datasourceId: string,
): Promise<{ resolved: boolean }> {
  const { db } = deps;
  const newest = await newestDiskPoint(db, datasourceId);
  if (!newest) return { resolved: false };
  // Quarantined blocks that no backup has stored again: usually none, or a few.
  const lost = await db
    .selectDistinct({ hash: quarantinedChunks.hash })
    .from(quarantinedChunks)
    .where(sql`not exists (select 1 from ${chunks} c where c.hash = ${quarantinedChunks.hash})`);
  if (lost.length > 0) {
    const hit = await firstHit(deps.manifests, newest.id, new Set(lost.map((l) => l.hash)));
    if (hit) return { resolved: false };
  }
  return { resolved: (await resolveAlert(db, 'verify-corruption', alertSubjectOf(datasourceId))) > 0 };
}

async function chooseRecoveryPoints(db: Db, rpIds: string[] | undefined): Promise<RpRow[]> {
  if (!rpIds) return allDiskPoints(db);
  const wanted = [...new Set(rpIds)];
  const rows: (RpRow & { tier: string })[] = [];
  for (let i = 0; i < wanted.length; i += BATCH) {
    rows.push(
      ...(await db
        .select({
          id: recoveryPoints.id,
          datasourceId: recoveryPoints.datasourceId,
          status: recoveryPoints.status,
          tier: recoveryPoints.tier,
        })
        .from(recoveryPoints)
        .where(inArray(recoveryPoints.id, wanted.slice(i, i + BATCH)))),
    );
  }
  const found = new Map(rows.map((r) => [r.id, r]));
  for (const id of wanted) {
    const r = found.get(id);
    if (!r) throw new AppError('NOT_FOUND', `recovery point ${id} not found`);
    if (r.tier !== 'disk')
      throw new AppError('INVALID_INPUT', `recovery point ${id} is in the vault; verify checks disk points`);
  }
  return wanted.map((id) => found.get(id)!);
}

function allDiskPoints(db: Db): Promise<RpRow[]> {
  return db
    .select({
      id: recoveryPoints.id,
      datasourceId: recoveryPoints.datasourceId,
      status: recoveryPoints.status,
    })
    .from(recoveryPoints)
    .where(eq(recoveryPoints.tier, 'disk'))
    .orderBy(asc(recoveryPoints.createdAt));
}

export async function newestDiskPoint(db: Db, datasourceId: string): Promise<RpRow | undefined> {
  const [rp] = await db
    .select({
      id: recoveryPoints.id,
      datasourceId: recoveryPoints.datasourceId,
      status: recoveryPoints.status,
    })
    .from(recoveryPoints)
    .where(and(eq(recoveryPoints.datasourceId, datasourceId), eq(recoveryPoints.tier, 'disk')))
    .orderBy(desc(recoveryPoints.createdAt), desc(recoveryPoints.id))
    .limit(1);
  return rp;
}

/** Calls `fn` for every block hash the manifest names (until it returns true); returns why it could not be read, if so. */
async function forEachHash(
  manifests: ManifestStore,
  rpId: string,
  fn: (hex: string) => unknown,
): Promise<string | undefined> {
  try {
    for await (const batch of manifests.read(rpId)) {
      for (const e of batch) {
        if (e.type !== 'file') continue;
        for (const h of e.hashes) if (h && fn(hashHex(h)) === true) return undefined;
      }
    }
    return undefined;
  } catch (err) {
    const code = err instanceof ManifestError ? err.code : 'STORE_IO';
    return `${code}: ${(err as Error).message}`;
  }
}

/** The reason a point is corrupt if its manifest names one of these blocks (or cannot be read). */
async function firstHit(
  manifests: ManifestStore,
  rpId: string,
  bad: Map<string, CorruptBlock> | Set<string>,
): Promise<string | undefined> {
  let found: string | undefined;
  const failure = await forEachHash(manifests, rpId, (h) => {
    if (!bad.has(h)) return false;
    const b = bad instanceof Map ? bad.get(h) : undefined;
    found = `block ${h} is damaged or missing${b ? ` (${b.reason})` : ''}`;
    return true;
  });
  return found ?? failure;
}

/** Why each of these blocks is not in the index: the latest quarantine reason, or never stored. */
async function quarantineReasons(db: Db, hashes: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (let i = 0; i < hashes.length; i += BATCH) {
    const batch = hashes.slice(i, i + BATCH);
    const rows = await db
      .select({
        hash: quarantinedChunks.hash,
        reason: quarantinedChunks.reason,
        at: quarantinedChunks.quarantinedAt,
      })
      .from(quarantinedChunks)
      .where(inArray(quarantinedChunks.hash, batch))
      .orderBy(asc(quarantinedChunks.quarantinedAt));
    for (const r of rows) out.set(r.hash, `quarantined ${r.at.toISOString()}: ${r.reason}`);
    for (const h of batch) if (!out.has(h)) out.set(h, 'not in the chunk index');
  }
  return out;
}

/**
 * Moves the index rows of damaged blocks to `quarantined_chunks` (and drops their ownership
 * rows), in one transaction. A row that moved meanwhile (garbage collection rewrote its pack,
 * after checking the block) is left alone.
 */
async function quarantine(
  db: Db,
  damaged: { loc: ChunkLocation; reason: string }[],
): Promise<{ hash: string; pack: string; reason: string }[]> {
  if (damaged.length === 0) return [];
  const sorted = [...damaged].sort((a, b) => (a.loc.hash < b.loc.hash ? -1 : 1));
  return db.transaction(async (tx) => {
    const done: { hash: string; pack: string; reason: string }[] = [];
    for (let i = 0; i < sorted.length; i += BATCH) {
      const batch = sorted.slice(i, i + BATCH);
      // Lock in hash order, like touches and the garbage collector's sweep.
      await tx
        .select({ hash: chunks.hash })
        .from(chunks)
        .where(
          inArray(
            chunks.hash,
            batch.map((d) => d.loc.hash),
          ),
        )
        .orderBy(asc(chunks.hash))
        .for('update');
      const moved: string[] = [];
      for (const { loc, reason } of batch) {
        const gone = await tx
          .delete(chunks)
          .where(and(eq(chunks.hash, loc.hash), eq(chunks.pack, loc.pack), eq(chunks.offset, loc.offset)))
          .returning({ hash: chunks.hash });
        if (gone.length === 0) continue;
        await tx.insert(quarantinedChunks).values({
          id: randomUUID(),
          hash: loc.hash,
          pack: loc.pack,
          offset: loc.offset,
          storedSize: loc.storedSize,
          reason: reason.slice(0, 1000),
        });
        done.push({ hash: loc.hash, pack: loc.pack, reason });
        moved.push(loc.hash);
      }
      // Ownership of a block that is gone counts for nothing; drop it with the block.
      if (moved.length > 0) await tx.delete(agentChunks).where(inArray(agentChunks.hash, moved));
    }
    return done;
  });
}
