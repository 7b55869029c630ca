import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { and, desc, eq, inArray, isNull, sql } from 'drizzle-orm';
import type { Logger } from 'pino';
import { packBlocks } from '../../lib/packed-blocks.ts';
import { hashHex } from '../../protocol/hash.ts';
import { BlockEncoding } from '../../protocol/messages.ts';
import { MAX_BLOCK_SIZE } from '../../protocol/version.ts';
import type { Entry, FileEntry } from '../../protocol/entry.ts';
import { locateChunks } from '../chunk-store/chunk-index.ts';
import type { Db, Tx } from '../db/database.ts';
import { agents, datasources, jobs, protectionGroups, recoveryPoints } from '../db/schema.ts';
import { AppError, notFound } from '../errors.ts';
import { createJob, type JobRow } from '../jobs/job-repo.ts';
import { type MasterKeyJson, masterKeyToJson } from './format/crypto.ts';
import { sha256Hex } from './format/id.ts';
import { MAX_BLOBS_PER_INDEX_FILE } from './format/index-file.ts';
import { LOCK_REFRESH_MS } from './format/locks.ts';
import { wrapInPath } from './format/path-trees.ts';
import type { VaultRepository } from './format/repository.ts';
import { holdfastTags, newSnapshot } from './format/snapshot.ts';
import { maxPackBytes } from './format/pack.ts';
import { type EncodedTree, fileNode } from './format/tree.ts';
import type { DataBlobSource, PackTask, PackTaskResult } from './pack-worker.ts';
import { treesOfEntries, WalkOrderTrees, wrapFolder } from './point-trees.ts';
import { locateBlobs, markIndexed, recordPack, unindexedPacks } from './vault-mirror.ts';
import type { HoldfastSnapshotMeta, VaultService } from './vault-service.ts';

/*
 * The online backup (job type 'online-backup'): copies the newest intact disk recovery point of
 * each datasource of a group (or of the datasources named) into the vault as one restic
 * snapshot. The point's manifest is read as a stream (PointCopy): blocks the vault lacks (per the
 * vault_blobs mirror) go, in chunk-store order within each lookup batch, to a pool of worker
 * threads that reads them from the chunk store as stored, compresses raw ones (zstd blocks keep
 * their compression), encrypts and assembles packs of about 16 MiB; this thread only schedules,
 * uploads and records each pack (vault_packs + vault_blobs, one transaction) right after its
 * upload. Each folder's tree goes to the tree packs as soon as the walk leaves the folder. Then
 * the index file(s) for the packs recorded, the snapshot and the vault recovery point row. A run
 * that is interrupted is retried: packs already recorded are not uploaded again, and their index
 * file is written by the next run.
 */

export interface OnlineBackupParams {
  group?: string;
  datasourceIds?: string[];
}

/**
 * Packs aim at this many bytes of blobs (16-64 MiB; blocks are at most 4 MiB): restic's own
 * default. Each pack in flight holds a slot this large, so larger packs cost the server memory
 * (32 MiB packs: +70-130 MiB peak in an online backup, measured) and bought no speed.
 */
const TARGET_PACK_BYTES = 16 * 1024 * 1024;
/**
 * Packs close at this many blobs too (a point of tiny files would otherwise put hundreds of
 * thousands in one pack, past restic's 16 MiB header limit). A pack slot fits any data pack:
 * it closes once its blocks reach TARGET_PACK_BYTES, so it holds at most that plus one block
 * (stored at most MAX_BLOCK_SIZE).
 */
const SLOT_BLOBS = 16_384;
const SLOT_BYTES = maxPackBytes({ blobs: SLOT_BLOBS, inputBytes: TARGET_PACK_BYTES + MAX_BLOCK_SIZE });
/** Tree packs: their blobs are held on this thread until the pack is handed to the pool. */
const TREE_PACK_BYTES = 16 * 1024 * 1024;
/** Block ids looked up (vault mirror, chunk index) and ordered for packing at once. */
const LOOKUP_BLOCKS = 8192;
/** The first lookup is this small, so the pool starts early; each next one is 4 times larger. */
const FIRST_LOOKUP_BLOCKS = 512;
/**
 * Packs planned ahead of the pool (their blobs chosen, waiting for a slot): enough to keep the
 * pool busy while the next lookup runs, few enough that what they hold stays small.
 */
const PLANNED_AHEAD = 4;
/** Finished trees looked up in the vault mirror at once (or TREE_PACK_BYTES of them). */
const LOOKUP_TREES = 2048;
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
  /**
   * Blocks the points name that the vault already held (counted per lookup batch: one named
   * again in a later batch of the same point counts again).
   */
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

/**
 * Copies one point. The manifest is read as a stream, never held whole: its block ids are
 * looked up (vault mirror, then chunk index) LOOKUP_BLOCKS at a time and the blocks the vault
 * lacks go to packs in chunk-store order within each lookup; each folder's tree is finished as
 * soon as the walk leaves the folder (point-trees.ts) and goes to the tree packs. What this holds
 * is the lookup batch, the open folders' listings, the blob ids of the packs not yet recorded
 * and the packs in flight (a pack per pool thread, plus one being uploaded).
 */
class PointCopy {
  /** Zero blob id by length, and back. */
  private readonly zeroIds = new Map<number, string>();
  private readonly zeroLens = new Map<string, number>();
  /** Packs planned, waiting for a slot, started in this order. */
  private readonly planned: PlannedPack[] = [];
  /** Packs holding a slot (being built or uploaded): each settles when its slot is free again. */
  private readonly holding = new Set<Promise<void>>();
  /** Packs started and not yet recorded (or failed). */
  private readonly inflight = new Set<Promise<void>>();
  private failure: Error | undefined;
  private readonly maxInFlight: number;
  /** Blocks named before the next lookup (grows to LOOKUP_BLOCKS). */
  private lookupBlocks = FIRST_LOOKUP_BLOCKS;
  /**
   * Shared memory the pool builds packs into and uploads go from, one slot per pack in flight,
   * reused pack after pack (pack-worker.ts says why).
   */
  private readonly freeSlots: SharedArrayBuffer[] = [];
  private readonly keyJson: MasterKeyJson;
  /**
   * Blob ids put in a pack of this run (waiting, being built or uploaded) and not recorded in the
   * mirror yet: neither looked up nor packed again. Recorded ones are found in the mirror.
   */
  private readonly scheduled = { data: new Set<string>(), tree: new Set<string>() };
  /** Packs this run recorded: a block found in one of them is not one the vault already held. */
  private readonly ownPacks = new Set<string>();
  /** Block ids named since the last lookup. */
  private wanted = new Set<string>();
  /** Blocks for the next data pack (carried from one lookup to the next until it is full). */
  private dataBatch: DataBlobSource[] = [];
  private dataBatchBytes = 0;
  /** Trees finished since the last lookup. */
  private treeCandidates = new Map<string, EncodedTree>();
  private treeCandidateBytes = 0;
  /** Trees for the next tree pack. */
  private treeBatch: EncodedTree[] = [];
  private treeBatchBytes = 0;
  /** Blobs recorded since an index file was last written. */
  private unindexedBlobs = 0;

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
  ) {
    // Every pool thread building a pack, and one more being uploaded.
    this.maxInFlight = vault.pool().maxThreads + 1;
    this.keyJson = masterKeyToJson(repo.key);
  }

  private get db(): Db {
    return this.vault.deps.db;
  }

  private zeroId(len: number): string {
    let id = this.zeroIds.get(len);
    if (!id) {
      id = sha256Hex(Buffer.alloc(len));
      this.zeroIds.set(len, id);
      this.zeroLens.set(id, len);
    }
    return id;
  }

  async run(): Promise<OnlineBackupReport['points'][number]> {
    let rootTreeId: string;
    try {
      rootTreeId = await this.copyBlobs();
    } catch (err) {
      // Nothing of this run may land after it failed (a read error, say): planned packs are
      // dropped, started ones settle.
      this.failure ??= err as Error;
      this.planned.length = 0;
      while (this.inflight.size > 0) await Promise.all(this.inflight);
      throw err;
    }
    this.report.indexFiles.push(...(await writeIndex(this.db, this.repo)));

    const rpId = randomUUID();
    const meta: HoldfastSnapshotMeta = {
      kind: this.rp.kind,
      blockSize: this.ds.blockSize,
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

  /** Streams the manifest: uploads the blocks the vault lacks and every new tree. Returns the root tree id. */
  private async copyBlobs(): Promise<string> {
    const time = this.rp.createdAt;
    const image = this.rp.kind === 'image';
    const walk = image ? undefined : new WalkOrderTrees(time, (t) => this.addTree(t));
    let inWalkOrder = true;
    let imageFile: { entry: FileEntry; content: string[] } | undefined;
    for await (const batch of this.vault.deps.manifests.read(this.rp.id)) {
      for (const e of batch) {
        let content: string[] | undefined;
        if (e.type === 'file') {
          content = this.contentIds(e);
          for (const id of content) this.wanted.add(id);
          if (image) imageFile ??= { entry: e, content };
        }
        if (walk && inWalkOrder && !walk.add(e, content)) {
          inWalkOrder = false;
          this.log.warn(
            { rpId: this.rp.id, path: e.path },
            'manifest not in walk order: its trees are built from the whole manifest',
          );
        }
        if (this.wanted.size >= this.lookupBlocks) {
          await this.lookupData();
          this.lookupBlocks = Math.min(LOOKUP_BLOCKS, this.lookupBlocks * 4);
        }
        if (this.treeCandidates.size >= LOOKUP_TREES || this.treeCandidateBytes >= TREE_PACK_BYTES)
          await this.lookupTrees();
      }
    }
    await this.lookupData();
    if (this.dataBatch.length > 0) await this.dispatchData();

    let wrapped: { rootTreeId: string; trees: EncodedTree[] };
    if (image) {
      if (!imageFile) throw new Error(`image recovery point ${this.rp.id} has no file entry`);
      const e = imageFile.entry;
      const top = fileNode({
        name: path.posix.basename(this.ds.path) || 'image',
        mode: e.mode,
        mtime: e.mtimeMs,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        content: imageFile.content,
      });
      wrapped = wrapInPath(this.ds.path, top, { mtime: time });
    } else if (inWalkOrder) {
      wrapped = wrapFolder(this.ds.path, walk!.finish().id, time);
    } else {
      const { folderTree, trees } = treesOfEntries(await this.allEntries(), time);
      for (const t of trees) this.addTree(t);
      wrapped = wrapFolder(this.ds.path, folderTree.id, time);
    }
    for (const t of wrapped.trees) this.addTree(t);
    await this.lookupTrees();
    if (this.treeBatch.length > 0) await this.dispatchTrees();
    await this.drain();
    return wrapped.rootTreeId;
  }

  /** A file's data blob ids, in order (zero blocks named by the id of their zeros). */
  private contentIds(e: FileEntry): string[] {
    const bs = this.ds.blockSize;
    return e.hashes.map((h, i) => (h ? hashHex(h) : this.zeroId(Math.min(bs, e.size - i * bs))));
  }

  /** The whole manifest with its files' blob ids, for a manifest not in walk order. */
  private async allEntries(): Promise<{ entry: Entry; content?: string[] }[]> {
    const all: { entry: Entry; content?: string[] }[] = [];
    for await (const batch of this.vault.deps.manifests.read(this.rp.id)) {
      for (const entry of batch)
        all.push(entry.type === 'file' ? { entry, content: this.contentIds(entry) } : { entry });
    }
    return all;
  }

  /**
   * Looks up the blocks named since the last lookup and puts those the vault lacks, in
   * chunk-store order (so the pool's reads run through each store pack front to back), into
   * data packs.
   */
  private async lookupData(): Promise<void> {
    if (this.wanted.size === 0) return;
    // Blocks already in a pack of this run are skipped now, before the await: one recorded
    // meanwhile is then found in the mirror.
    const ids = [...this.wanted].filter((id) => !this.scheduled.data.has(id));
    this.wanted = new Set();
    const inVault = await locateBlobs(this.db, 'data', ids);
    const missing: string[] = [];
    for (const id of ids) {
      const row = inVault.get(id);
      if (!row) missing.push(id);
      else if (!this.ownPacks.has(row.packId)) this.report.blobsDeduplicated += 1;
    }
    if (missing.length === 0) return;
    const locations = await locateChunks(
      this.db,
      missing.filter((id) => !this.zeroLens.has(id)),
    );
    const { store } = this.vault.deps;
    // A store pack holds hundreds of blocks: its paths are made once (per block they were a
    // seventh of what this thread allocated in an online backup, measured).
    const packFiles = new Map<string, { file: string; trashFile: string }>();
    const filesOf = (pack: string) => {
      let files = packFiles.get(pack);
      if (!files) {
        files = { file: store.pathOf(pack), trashFile: store.trashPathOf(pack) };
        packFiles.set(pack, files);
      }
      return files;
    };
    const sources: { source: DataBlobSource; size: number; pack: string; offset: number }[] = [];
    let total = 0;
    for (const id of missing) {
      const zeroLength = this.zeroLens.get(id);
      if (zeroLength !== undefined) {
        sources.push({ source: { id, zeroLength }, size: zeroLength, pack: '', offset: 0 });
        total += zeroLength;
        continue;
      }
      const loc = locations.get(id);
      if (!loc)
        throw new Error(`block ${id} of recovery point ${this.rp.id} is missing from the chunk store`);
      const block = {
        hash: id,
        ...filesOf(loc.pack),
        offset: loc.offset,
        storedSize: loc.storedSize,
      };
      sources.push({
        source: loc.encoding === BlockEncoding.zstd ? { id, block, zstdLength: loc.size } : { id, block },
        size: loc.storedSize,
        pack: loc.pack,
        offset: loc.offset,
      });
      total += loc.storedSize;
    }
    // The total grows lookup by lookup: it is known once the manifest is read.
    await this.db
      .update(jobs)
      .set({ bytesTotal: sql`coalesce(${jobs.bytesTotal}, 0) + ${total}` })
      .where(eq(jobs.id, this.job.id));
    sources.sort((a, b) => (a.pack < b.pack ? -1 : a.pack > b.pack ? 1 : a.offset - b.offset));
    for (const s of sources) {
      this.dataBatch.push(s.source);
      this.dataBatchBytes += s.size;
      this.scheduled.data.add(s.source.id);
      if (this.dataBatchBytes >= TARGET_PACK_BYTES || this.dataBatch.length >= SLOT_BLOBS)
        await this.dispatchData();
    }
  }

  private dispatchData(): Promise<void> {
    const sources = this.dataBatch;
    const bytes = this.dataBatchBytes;
    this.dataBatch = [];
    this.dataBatchBytes = 0;
    return this.dispatch({ type: 'data', sources }, bytes);
  }

  private addTree(t: EncodedTree): void {
    if (this.treeCandidates.has(t.id)) return;
    this.treeCandidates.set(t.id, t);
    this.treeCandidateBytes += t.bytes.length;
  }

  /** Looks up the trees finished since the last lookup and puts those the vault lacks into tree packs. */
  private async lookupTrees(): Promise<void> {
    if (this.treeCandidates.size === 0) return;
    const trees = [...this.treeCandidates.values()].filter((t) => !this.scheduled.tree.has(t.id));
    this.treeCandidates = new Map();
    this.treeCandidateBytes = 0;
    const have = await locateBlobs(
      this.db,
      'tree',
      trees.map((t) => t.id),
    );
    for (const t of trees) {
      if (have.has(t.id)) continue;
      this.treeBatch.push(t);
      this.treeBatchBytes += t.bytes.length;
      this.scheduled.tree.add(t.id);
      if (this.treeBatchBytes >= TREE_PACK_BYTES || this.treeBatch.length >= SLOT_BLOBS)
        await this.dispatchTrees();
    }
  }

  private dispatchTrees(): Promise<void> {
    const blocks = packBlocks(this.treeBatch.map((t) => t.bytes));
    const ids = this.treeBatch.map((t) => t.id);
    const bytes = this.treeBatchBytes;
    this.treeBatch = [];
    this.treeBatchBytes = 0;
    return this.dispatch({ type: 'tree', blocks, ids }, bytes, [blocks.buffer]);
  }

  /**
   * Plans one pack: it starts (pool, upload, record) as soon as a slot is free, while this
   * thread goes on reading the manifest and looking up the next blocks. Waits only when
   * PLANNED_AHEAD packs are already waiting.
   */
  private async dispatch(
    blobs: DistributiveOmit<PackTask, 'key' | 'slot'>,
    inputBytes: number,
    transferList: ArrayBuffer[] = [],
  ): Promise<void> {
    // A failed upload fails the run, but only once every other upload has settled: a pack
    // still in flight must not land (and be recorded) after the retry planned what to send.
    if (this.failure) await this.drain();
    // A full index file's worth of recorded packs: written now, so that what the index write
    // holds does not grow with the point (packs recorded meanwhile go in the next one).
    if (this.unindexedBlobs >= MAX_BLOBS_PER_INDEX_FILE) {
      this.unindexedBlobs = 0;
      this.report.indexFiles.push(...(await writeIndex(this.db, this.repo)));
    }
    this.planned.push({ blobs, inputBytes, transferList });
    this.startPlanned();
    while (this.planned.length > PLANNED_AHEAD && !this.failure) await Promise.race(this.holding);
  }

  /** Starts planned packs while slots are free (none after a failure). */
  private startPlanned(): void {
    while (this.planned.length > 0 && this.holding.size < this.maxInFlight && !this.failure) {
      this.start(this.planned.shift()!);
    }
  }

  /** Builds a pack in the pool, uploads it from its slot, frees the slot, then records the pack. */
  private start({ blobs, inputBytes, transferList }: PlannedPack): void {
    const { type } = blobs;
    // A slot per pack in flight, made when first needed (its pages are committed as packs are
    // written into it: a small point touches little of it). After a failed upload the slot is
    // not lent again: nothing of a request that gave up may read a later pack.
    const slot = this.freeSlots.pop() ?? new SharedArrayBuffer(SLOT_BYTES);
    const task = { ...blobs, key: this.keyJson, slot } as PackTask;
    let settle!: () => void;
    const held = new Promise<void>((resolve) => {
      settle = resolve;
    });
    this.holding.add(held);
    const free = (reusable: boolean) => {
      if (!this.holding.delete(held)) return;
      if (reusable) this.freeSlots.push(slot);
      settle();
      this.startPlanned();
    };
    const work = (async () => {
      const built = (await this.vault.pool().run(task, { transferList })) as PackTaskResult;
      const bytes = built.moved ? Buffer.from(built.moved) : Buffer.from(slot, 0, built.length);
      await this.repo.savePack({ id: built.id, bytes });
      // The slot can take the next pack while this one is recorded.
      free(true);
      await this.recordUploaded(built, type, inputBytes);
    })();
    const tracked = work
      .catch((err: Error) => {
        this.failure ??= err;
      })
      .finally(() => free(false));
    this.inflight.add(tracked);
    void tracked.finally(() => this.inflight.delete(tracked));
  }

  /** Records an uploaded pack in the mirror, the report and the job's progress. */
  private async recordUploaded(built: PackTaskResult, type: PackTask['type'], inputBytes: number) {
    const size = built.length;
    await recordPack(this.db, { id: built.id, type, size, entries: built.entries });
    this.ownPacks.add(built.id);
    this.unindexedBlobs += built.entries.length;
    const scheduled = this.scheduled[type];
    for (const e of built.entries) scheduled.delete(e.id);
    this.report.packsUploaded += 1;
    this.report.blobsUploaded += built.entries.length;
    if (type === 'data') this.report.dataBlobsUploaded += built.entries.length;
    this.report.bytesUploaded += size;
    if (type === 'data') {
      await this.db
        .update(jobs)
        .set({
          bytesDone: sql`${jobs.bytesDone} + ${inputBytes}`,
          bytesSent: sql`${jobs.bytesSent} + ${size}`,
          bytesStored: sql`${jobs.bytesStored} + ${size}`,
          blocksSent: sql`${jobs.blocksSent} + ${built.entries.length}`,
        })
        .where(eq(jobs.id, this.job.id));
    }
    this.log.debug({ packId: built.id, blobs: built.entries.length, bytes: size }, 'pack uploaded');
  }

  /** Waits for every planned pack to be recorded (or, after a failure, for those started). */
  private async drain(): Promise<void> {
    // An uploaded pack frees its slot, which starts the next planned one, before its own record
    // ends: so once nothing is in flight, nothing is planned either (unless the run failed).
    while (this.inflight.size > 0) await Promise.all(this.inflight);
    if (this.failure) throw this.failure;
  }
}

interface PlannedPack {
  blobs: DistributiveOmit<PackTask, 'key' | 'slot'>;
  inputBytes: number;
  transferList: ArrayBuffer[];
}

/** Omit over each member of a union (Omit alone merges the members). */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
