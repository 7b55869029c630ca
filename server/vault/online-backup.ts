import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { and, desc, eq, inArray, isNull, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { packBlocks } from '../../lib/packed-blocks.ts';
import { hashHex } from '../../protocol/hash.ts';
import { BlockEncoding } from '../../protocol/messages.ts';
import type { Entry } from '../../protocol/entry.ts';
import { locateChunks } from '../chunk-store/chunk-index.ts';
import type { Db, Tx } from '../db/database.ts';
import { agents, datasources, jobs, protectionGroups, recoveryPoints } from '../db/schema.ts';
import { AppError, notFound } from '../errors.ts';
import { createJob, type JobRow } from '../jobs/job-repo.ts';
import { masterKeyToJson } from './format/crypto.ts';
import { sha256Hex } from './format/id.ts';
import { LOCK_REFRESH_MS } from './format/locks.ts';
import { wrapInPath } from './format/path-trees.ts';
import type { VaultRepository } from './format/repository.ts';
import { holdfastTags, newSnapshot } from './format/snapshot.ts';
import {
  dirNode,
  type EncodedTree,
  encodeTree,
  fileNode,
  symlinkNode,
  type TreeNode,
} from './format/tree.ts';
import type { DataBlobSource, PackTask, PackTaskResult } from './pack-worker.ts';
import { locateBlobs, markIndexed, recordPack, unindexedPacks } from './vault-mirror.ts';
import type { HoldfastSnapshotMeta, VaultService } from './vault-service.ts';

/*
 * The online backup (job type 'online-backup'): copies the newest intact disk recovery point of
 * each datasource of a group (or of the datasources named) into the vault as one restic
 * snapshot. Blocks the vault lacks (per the vault_blobs mirror) go, in chunk-store order, to a
 * pool of worker threads that reads them from the chunk store as stored, compresses raw ones
 * (zstd blocks keep their compression), encrypts and assembles packs of about 32 MiB; this thread only
 * schedules, uploads and records each pack (vault_packs + vault_blobs, one transaction) right
 * after its upload. Then the trees, the index file(s) for the packs recorded, the snapshot and
 * the vault recovery point row. A run that is interrupted is retried: packs already recorded
 * are not uploaded again, and their index file is written by the next run.
 */

export interface OnlineBackupParams {
  group?: string;
  datasourceIds?: string[];
}

/** Packs aim at this many bytes of blobs (16-64 MiB; blocks are at most 4 MiB). */
const TARGET_PACK_BYTES = 32 * 1024 * 1024;
/** Packs being built or uploaded at once. */
const MAX_PACKS_IN_FLIGHT = 3;
/** Scheduled (and manual) online backups get retries: an interrupted run starts again. */
const ONLINE_RETRIES = 3;

export async function requestOnlineBackup(
  db: Db | Tx,
  input: OnlineBackupParams,
  trigger: JobRow['trigger'] = 'manual',
): Promise<JobRow> {
  let groupId: string | null = null;
  if (input.group) {
    const [g] = await db.select().from(protectionGroups).where(eq(protectionGroups.name, input.group));
    if (!g) throw notFound(`protection group "${input.group}"`);
    groupId = g.id;
  } else if (!input.datasourceIds?.length) {
    throw new AppError('INVALID_INPUT', 'name a protection group or datasources to copy to the vault');
  }
  for (const id of input.datasourceIds ?? []) {
    const [ds] = await db.select({ id: datasources.id }).from(datasources).where(eq(datasources.id, id));
    if (!ds) throw notFound(`datasource ${id}`);
  }
  if (groupId) {
    const [queued] = await db
      .select()
      .from(jobs)
      .where(and(eq(jobs.type, 'online-backup'), eq(jobs.state, 'queued'), eq(jobs.groupId, groupId)));
    if (queued && !input.datasourceIds?.length) return queued;
  }
  return createJob(db, {
    type: 'online-backup',
    agentId: null,
    datasourceId: null,
    groupId,
    trigger,
    params: input,
    maxRetries: ONLINE_RETRIES,
  });
}

/** For the scheduler: queue the online backup of a group (one queued at a time per group). */
export async function queueOnlineBackup(
  db: Db | Tx,
  groupId: string,
  trigger: JobRow['trigger'] = 'schedule',
): Promise<JobRow> {
  const [g] = await db.select().from(protectionGroups).where(eq(protectionGroups.id, groupId));
  if (!g) throw notFound(`protection group ${groupId}`);
  return requestOnlineBackup(db, { group: g.name }, trigger);
}

export interface OnlineBackupReport {
  points: { datasourceId: string; sourceRpId: string; rpId: string; snapshotId: string }[];
  skipped: { datasourceId: string; reason: string }[];
  packsUploaded: number;
  blobsUploaded: number;
  /** Of those, data blobs (blocks); the rest are trees. */
  dataBlobsUploaded: number;
  bytesUploaded: number;
  /** Blocks the points name that the vault already held. */
  blobsDeduplicated: number;
  indexFiles: string[];
}

export async function runOnlineBackup(
  vault: VaultService,
  job: JobRow,
  log: Logger,
): Promise<OnlineBackupReport> {
  const { db } = vault.deps;
  const params = job.params as OnlineBackupParams;
  const repo = await vault.repo();
  let members: (typeof datasources.$inferSelect)[];
  let groupName: string | undefined = params.group;
  if (params.datasourceIds?.length) {
    members = await db.select().from(datasources).where(inArray(datasources.id, params.datasourceIds));
  } else {
    const [g] = await db
      .select()
      .from(protectionGroups)
      .where(eq(protectionGroups.name, params.group ?? ''));
    if (!g) throw new Error(`protection group "${params.group}" no longer exists`);
    groupName = g.name;
    members = await db.select().from(datasources).where(eq(datasources.groupId, g.id));
  }
  const report: OnlineBackupReport = {
    points: [],
    skipped: [],
    packsUploaded: 0,
    blobsUploaded: 0,
    dataBlobsUploaded: 0,
    bytesUploaded: 0,
    blobsDeduplicated: 0,
    indexFiles: [],
  };
  await removeOrphanedLocks(repo, log);
  const lock = await repo.lock({ exclusive: false, autoRefreshMs: LOCK_REFRESH_MS });
  try {
    // The mirror is consulted only under this shared lock: a prune (exclusive) cannot run now,
    // and if one ran since the mirror was last synced (its index files are gone), resync first,
    // so dedup never skips a block the vault no longer holds.
    await vault.syncMirror(repo, { dropMissingUnindexed: true });
    // Packs a run before this one recorded but did not get into an index file.
    report.indexFiles.push(...(await writeIndex(db, repo)));
    for (const ds of members) {
      const [rp] = await db
        .select()
        .from(recoveryPoints)
        .where(
          and(
            eq(recoveryPoints.datasourceId, ds.id),
            eq(recoveryPoints.tier, 'disk'),
            eq(recoveryPoints.status, 'ok'),
          ),
        )
        .orderBy(desc(recoveryPoints.createdAt))
        .limit(1);
      if (!rp) {
        report.skipped.push({ datasourceId: ds.id, reason: 'no disk recovery point' });
        continue;
      }
      const [copied] = await db
        .select({ id: recoveryPoints.id })
        .from(recoveryPoints)
        .where(and(eq(recoveryPoints.sourceRpId, rp.id), isNull(recoveryPoints.deletedAt)));
      if (copied) {
        report.skipped.push({
          datasourceId: ds.id,
          reason: `recovery point ${rp.id} is already in the vault`,
        });
        continue;
      }
      const [agent] = await db.select().from(agents).where(eq(agents.id, ds.agentId));
      const group =
        groupName ??
        (ds.groupId
          ? (await db.select().from(protectionGroups).where(eq(protectionGroups.id, ds.groupId)))[0]?.name
          : undefined);
      const copy = new PointCopy(vault, repo, job, log, ds, rp, agent?.name ?? ds.agentId, group, report);
      report.points.push(await copy.run());
    }
  } finally {
    await lock.release().catch((err: Error) => {
      log.warn({ err: err.message, lockId: lock.id }, 'cannot release the vault lock; retrying later');
      orphanLock(repo, lock.id, log);
    });
  }
  return report;
}

/**
 * Locks of runs of this process whose release failed (the storage was failing, which is also why
 * the run failed). This process is alive, so restic would not take them for stale before 30
 * minutes, and `restic check`/`prune` would be refused meanwhile: they are removed again in the
 * background, and at the start of the next run.
 */
const orphanedLocks = new Map<string, { repo: VaultRepository; timer?: NodeJS.Timeout; tries: number }>();
const ORPHAN_RETRY_MS = [5_000, 15_000, 30_000, 60_000];
/** After this many background tries the lock has gone stale anyway (30 minutes). */
const ORPHAN_MAX_TRIES = 34;

function orphanLock(repo: VaultRepository, lockId: string, log: Logger): void {
  const entry: { repo: VaultRepository; timer?: NodeJS.Timeout; tries: number } = { repo, tries: 0 };
  orphanedLocks.set(lockId, entry);
  const schedule = () => {
    const delay = ORPHAN_RETRY_MS[Math.min(entry.tries, ORPHAN_RETRY_MS.length - 1)]!;
    entry.timer = setTimeout(() => {
      entry.tries += 1;
      repo.backend.remove(`locks/${lockId}`).then(
        () => {
          orphanedLocks.delete(lockId);
          log.info({ lockId }, 'vault lock of an interrupted run removed');
        },
        () => {
          if (!orphanedLocks.has(lockId)) return;
          if (entry.tries >= ORPHAN_MAX_TRIES) orphanedLocks.delete(lockId);
          else schedule();
        },
      );
    }, delay);
    entry.timer.unref();
  };
  schedule();
}

async function removeOrphanedLocks(repo: VaultRepository, log: Logger): Promise<void> {
  for (const [lockId, entry] of [...orphanedLocks]) {
    if (entry.repo !== repo) continue;
    try {
      await repo.backend.remove(`locks/${lockId}`);
      clearTimeout(entry.timer);
      orphanedLocks.delete(lockId);
      log.info({ lockId }, 'vault lock of an interrupted run removed');
    } catch {
      // still unreachable: the background retries go on, and this run's lock() will tell
    }
  }
}

/** Writes index file(s) for every recorded pack no index file names yet. */
async function writeIndex(db: Db, repo: VaultRepository): Promise<string[]> {
  const packs = await unindexedPacks(db);
  if (packs.length === 0) return [];
  const ids = await repo.saveIndex(packs);
  await markIndexed(
    db,
    packs.map((p) => p.id),
    ids[0]!,
  );
  return ids;
}

type SourceRp = typeof recoveryPoints.$inferSelect;
type Datasource = typeof datasources.$inferSelect;

class PointCopy {
  private readonly zeroIds = new Map<number, string>();
  private readonly inflight = new Set<Promise<void>>();
  private failure: Error | undefined;

  constructor(
    private readonly vault: VaultService,
    private readonly repo: VaultRepository,
    private readonly job: JobRow,
    private readonly log: Logger,
    private readonly ds: Datasource,
    private readonly rp: SourceRp,
    private readonly agentName: string,
    private readonly group: string | undefined,
    private readonly report: OnlineBackupReport,
  ) {}

  private get db(): Db {
    return this.vault.deps.db;
  }

  private zeroId(len: number): string {
    let id = this.zeroIds.get(len);
    if (!id) {
      id = sha256Hex(Buffer.alloc(len));
      this.zeroIds.set(len, id);
    }
    return id;
  }

  async run(): Promise<OnlineBackupReport['points'][number]> {
    const entries: Entry[] = [];
    for await (const batch of this.vault.deps.manifests.read(this.rp.id)) entries.push(...batch);
    const bs = this.ds.blockSize;
    const content = new Map<Entry, string[]>();
    const wanted = new Set<string>();
    const zeroLens = new Map<string, number>();
    for (const e of entries) {
      if (e.type !== 'file') continue;
      const ids = e.hashes.map((h, i) => {
        if (h) return hashHex(h);
        const len = Math.min(bs, e.size - i * bs);
        const id = this.zeroId(len);
        zeroLens.set(id, len);
        return id;
      });
      for (const id of ids) wanted.add(id);
      content.set(e, ids);
    }
    const inVault = await locateBlobs(this.db, 'data', [...wanted]);
    const missing = [...wanted].filter((id) => !inVault.has(id));
    this.report.blobsDeduplicated += wanted.size - missing.length;
    const { rootTreeId, trees } = this.buildTrees(entries, content);
    try {
      await this.uploadData(missing, zeroLens);
      await this.uploadTrees(trees);
    } catch (err) {
      // Nothing of this run may land after it failed (a read error, say): let uploads settle.
      await Promise.allSettled([...this.inflight]);
      throw err;
    }
    this.report.indexFiles.push(...(await writeIndex(this.db, this.repo)));

    const rpId = randomUUID();
    const meta: HoldfastSnapshotMeta = {
      kind: this.rp.kind,
      blockSize: bs,
      consistency: this.rp.consistency,
      origin: this.rp.origin,
      bytes: this.rp.bytes,
      files: this.rp.files,
      blocks: this.rp.blocks,
      sourceRpId: this.rp.id,
    };
    const snapshot = {
      ...newSnapshot({
        time: this.rp.createdAt,
        tree: rootTreeId,
        paths: [this.ds.path],
        hostname: this.agentName,
        tags: holdfastTags({ datasourceId: this.ds.id, group: this.group, recoveryPointId: rpId }),
      }),
      holdfast: meta,
    };
    const snapshotId = await this.repo.saveSnapshot(snapshot);
    await this.db.insert(recoveryPoints).values({
      id: rpId,
      datasourceId: this.ds.id,
      jobId: this.job.id,
      origin: this.rp.origin,
      createdAt: this.rp.createdAt,
      tier: 'vault',
      kind: this.rp.kind,
      consistency: this.rp.consistency,
      bytes: this.rp.bytes,
      files: this.rp.files,
      blocks: this.rp.blocks,
      snapshotId,
      sourceRpId: this.rp.id,
      groupName: this.group ?? null,
    });
    this.log.info({ rpId, sourceRpId: this.rp.id, snapshotId }, 'recovery point copied to the vault');
    return { datasourceId: this.ds.id, sourceRpId: this.rp.id, rpId, snapshotId };
  }

  private async uploadData(missing: string[], zeroLens: Map<string, number>): Promise<void> {
    const real = missing.filter((id) => !zeroLens.has(id));
    const locations = await locateChunks(this.db, real);
    const sources: { source: DataBlobSource; size: number; at: [string, number] }[] = [];
    let total = 0;
    for (const id of missing) {
      const zeroLength = zeroLens.get(id);
      if (zeroLength !== undefined) {
        sources.push({ source: { id, zeroLength }, size: zeroLength, at: ['', 0] });
        total += zeroLength;
        continue;
      }
      const loc = locations.get(id);
      if (!loc)
        throw new Error(`block ${id} of recovery point ${this.rp.id} is missing from the chunk store`);
      const { store } = this.vault.deps;
      const block = {
        hash: id,
        file: store.pathOf(loc.pack),
        trashFile: store.trashPathOf(loc.pack),
        offset: loc.offset,
        storedSize: loc.storedSize,
      };
      sources.push({
        source: loc.encoding === BlockEncoding.zstd ? { id, block, zstdLength: loc.size } : { id, block },
        size: loc.storedSize,
        at: [loc.pack, loc.offset],
      });
      total += loc.storedSize;
    }
    await this.db
      .update(jobs)
      .set({ bytesTotal: sql`coalesce(${jobs.bytesTotal}, 0) + ${total}` })
      .where(eq(jobs.id, this.job.id));
    // In chunk-store order, so that the pool's reads run through each store pack front to back.
    sources.sort((a, b) => (a.at[0] < b.at[0] ? -1 : a.at[0] > b.at[0] ? 1 : a.at[1] - b.at[1]));
    let batch: DataBlobSource[] = [];
    let batchBytes = 0;
    for (const s of sources) {
      batch.push(s.source);
      batchBytes += s.size;
      if (batchBytes >= TARGET_PACK_BYTES) {
        await this.dispatch({ key: this.keyJson, type: 'data', sources: batch }, batchBytes);
        batch = [];
        batchBytes = 0;
      }
    }
    if (batch.length > 0)
      await this.dispatch({ key: this.keyJson, type: 'data', sources: batch }, batchBytes);
    await this.drain();
  }

  private async uploadTrees(trees: EncodedTree[]): Promise<void> {
    const unique = new Map(trees.map((t) => [t.id, t]));
    const have = await locateBlobs(this.db, 'tree', [...unique.keys()]);
    let batch: EncodedTree[] = [];
    let batchBytes = 0;
    const flush = () => {
      const blocks = packBlocks(batch.map((t) => t.bytes));
      const ids = batch.map((t) => t.id);
      const bytes = batchBytes;
      batch = [];
      batchBytes = 0;
      return this.dispatch({ key: this.keyJson, type: 'tree', blocks, ids }, bytes, [blocks.buffer]);
    };
    for (const t of unique.values()) {
      if (have.has(t.id)) continue;
      batch.push(t);
      batchBytes += t.bytes.length;
      if (batchBytes >= TARGET_PACK_BYTES) await flush();
    }
    if (batch.length > 0) await flush();
    await this.drain();
  }

  private get keyJson() {
    return masterKeyToJson(this.repo.key);
  }

  /** Hands one pack's blobs to the pool; the upload and the record follow when it is built. */
  private async dispatch(
    task: PackTask,
    inputBytes: number,
    transferList: ArrayBuffer[] = [],
  ): Promise<void> {
    while (this.inflight.size >= MAX_PACKS_IN_FLIGHT) await Promise.race(this.inflight);
    // A failed upload fails the run, but only once every other upload has settled: a pack
    // still in flight must not land (and be recorded) after the retry planned what to send.
    if (this.failure) await this.drain();
    const { type } = task;
    const work = (async () => {
      const built = (await this.vault.pool().run(task, { transferList })) as PackTaskResult;
      const bytes = Buffer.from(built.bytes);
      await this.repo.savePack({ id: built.id, bytes });
      await recordPack(this.db, { id: built.id, type, size: bytes.length, entries: built.entries });
      this.report.packsUploaded += 1;
      this.report.blobsUploaded += built.entries.length;
      if (type === 'data') this.report.dataBlobsUploaded += built.entries.length;
      this.report.bytesUploaded += bytes.length;
      if (type === 'data') {
        await this.db
          .update(jobs)
          .set({
            bytesDone: sql`${jobs.bytesDone} + ${inputBytes}`,
            bytesSent: sql`${jobs.bytesSent} + ${bytes.length}`,
            bytesStored: sql`${jobs.bytesStored} + ${bytes.length}`,
            blocksSent: sql`${jobs.blocksSent} + ${built.entries.length}`,
          })
          .where(eq(jobs.id, this.job.id));
      }
      this.log.debug({ packId: built.id, blobs: built.entries.length, bytes: bytes.length }, 'pack uploaded');
    })();
    const tracked = work.catch((err: Error) => {
      this.failure ??= err;
    });
    this.inflight.add(tracked);
    void tracked.finally(() => this.inflight.delete(tracked));
  }

  private async drain(): Promise<void> {
    await Promise.all(this.inflight);
    if (this.failure) throw this.failure;
  }

  /** The snapshot's trees: the datasource's folders (or the image file), wrapped in its path. */
  private buildTrees(
    entries: Entry[],
    content: Map<Entry, string[]>,
  ): { rootTreeId: string; trees: EncodedTree[] } {
    const time = this.rp.createdAt;
    if (this.rp.kind === 'image') {
      const e = entries.find((x) => x.type === 'file');
      if (e?.type !== 'file') throw new Error(`image recovery point ${this.rp.id} has no file entry`);
      const top = fileNode({
        name: path.posix.basename(this.ds.path) || 'image',
        mode: e.mode,
        mtime: e.mtimeMs,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        content: content.get(e) ?? [],
      });
      return wrapInPath(this.ds.path, top, { mtime: time });
    }
    const children = new Map<string, TreeNode[]>([['', []]]);
    const dirs = new Map<string, Extract<Entry, { type: 'dir' }>>();
    const ensureDir = (p: string) => {
      if (children.has(p)) return;
      children.set(p, []);
      ensureDir(parentOf(p));
    };
    for (const e of entries) {
      const parent = parentOf(e.path);
      ensureDir(parent);
      const meta = {
        name: path.posix.basename(e.path),
        mode: e.mode,
        mtime: e.mtimeMs,
        uid: e.uid,
        gid: e.gid,
      };
      if (e.type === 'dir') {
        dirs.set(e.path, e);
        ensureDir(e.path);
      } else if (e.type === 'file') {
        children.get(parent)!.push(fileNode({ ...meta, size: e.size, content: content.get(e) ?? [] }));
      } else {
        children.get(parent)!.push(symlinkNode({ ...meta, target: e.target }));
      }
    }
    const depth = (p: string) => (p === '' ? 0 : p.split('/').length);
    const order = [...children.keys()].sort((a, b) => depth(b) - depth(a));
    const trees: EncodedTree[] = [];
    let rootTree: EncodedTree | undefined;
    for (const dir of order) {
      const tree = encodeTree(children.get(dir)!);
      trees.push(tree);
      if (dir === '') {
        rootTree = tree;
        continue;
      }
      const d = dirs.get(dir);
      children.get(parentOf(dir))!.push(
        dirNode({
          name: path.posix.basename(dir),
          mode: d?.mode ?? 0o755,
          mtime: d?.mtimeMs ?? time,
          uid: d?.uid ?? 0,
          gid: d?.gid ?? 0,
          subtree: tree.id,
        }),
      );
    }
    const top = dirNode({ name: 'top', mode: 0o755, mtime: time, uid: 0, gid: 0, subtree: rootTree!.id });
    const wrapped = wrapInPath(this.ds.path, top, { mtime: time });
    return { rootTreeId: wrapped.rootTreeId, trees: [...trees, ...wrapped.trees] };
  }
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}
