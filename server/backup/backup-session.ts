import { randomUUID } from 'node:crypto';
import { and, eq, sql } from 'drizzle-orm';
import type { Piscina } from 'piscina';
import type { Entry } from '../../protocol/entry.ts';
import { ProtocolError } from '../../protocol/errors.ts';
import { hashHex } from '../../protocol/hash.ts';
import type { AgentMessageOf } from '../../protocol/messages.ts';
import { MAX_BLOCK_SIZE, MAX_UNACKED_BYTES } from '../../protocol/version.ts';
import { countIndexed, indexChunks, recordOwnership } from '../chunk-store/chunk-index.ts';
import type { ChunkLocation, ChunkStore } from '../chunk-store/chunk-store.ts';
import { touchAfterMsOf, touchOwnedChunks, touchStoredChunks } from '../chunk-store/chunk-touch.ts';
import type { BlockToAppend, PackWriter } from '../chunk-store/pack-writer.ts';
import type { Db } from '../db/database.ts';
import { type datasources, jobs, recoveryPoints } from '../db/schema.ts';
import { type AgentLink, type JobMessage, LinkDownError } from '../gateway/agent-link.ts';
import type { JobRow } from '../jobs/job-repo.ts';
import type { ManifestStore, ManifestWriter } from '../manifest/manifest-store.ts';
import { BoundedWork } from './bounded-work.ts';
import type { PackedBlocks } from '../../lib/packed-blocks.ts';
import type { VerifyResult, VerifyTask } from './verify-worker.ts';

export interface BackupDeps {
  db: Db;
  /** This server process: a job whose lease it lost gains no recovery point from it. */
  serverId: string;
  store: ChunkStore;
  manifests: ManifestStore;
  verifyPool: Piscina;
}

type Datasource = typeof datasources.$inferSelect;
type RecoveryPointOrigin = (typeof recoveryPoints.$inferInsert)['origin'];
/** `resumable`: the link dropped; what was acknowledged is kept and the job can continue later. */
/** A received block waiting for verification. */
interface PendingBlock {
  hash: Uint8Array;
  enc: number;
  data: Uint8Array;
  hex: string;
}

export type BackupOutcome = { ok: true; rpId: string } | { ok: false; error: string; resumable?: boolean };

/** Verification batches: big enough to amortise a worker round trip, small enough to overlap. */
const VERIFY_BATCH_BYTES = 1024 * 1024;
const VERIFY_BATCH_BLOCKS = 32;
const PARALLEL_VERIFY = 4;
/** Group commit: packs are fsynced and blocks acknowledged every 8 MiB or 50 ms. */
const FLUSH_BYTES = 8 * 1024 * 1024;
const FLUSH_MS = 50;
const PROGRESS_WRITE_MS = 1000;
/** Blocks of the base recovery point whose ownership is looked up at the start (ownedFromBase). */
const BASE_LOOKUP_MAX = 131_072;

/**
 * Server side of one backup. The agent offers hashes of blocks it read; the server asks only
 * for those this agent does not already own (agent_chunks) and has not sent in this session.
 * Received blocks are decoded and checked against their names in the worker pool, appended to
 * packs as received (already compressed by the agent), and acknowledged once durable: pack
 * fsync, then index and ownership rows in one transaction (group commit). At `backup.end` the
 * manifest is made durable and the recovery point row inserted, so an RP is complete or absent.
 *
 * Trust rule: an entry may only name blocks this agent uploaded, in this session or before.
 * Naming any other hash fails the job with PROTO_ERR_UNKNOWN_BLOCK, which is indistinguishable
 * from naming a hash that does not exist: no probing of other agents' data. A block that is in
 * the store already (another agent's) must still be uploaded once as proof of possession; it
 * is then only recorded as owned, not stored twice.
 */
export class BackupSession {
  private readonly rpId = randomUUID();
  private writer: ManifestWriter | undefined;
  private readonly packs: PackWriter;
  /** Requested from the agent and not yet received. */
  private readonly pending = new Set<string>();
  /** Requested although the store has them (another agent's): verify, record ownership, do not store. */
  private readonly proofOnly = new Set<string>();
  /** Received in this session (being verified, or verified and stored). */
  private readonly received = new Set<string>();
  private verifyBatch: PendingBlock[] = [];
  private verifyBatchBytes = 0;
  private verifyScheduled = false;
  private readonly verifying = new BoundedWork(PARALLEL_VERIFY);
  /** Shared buffers verification batches are copied into, free for the next batch. */
  private readonly batchBuffers: SharedArrayBuffer[] = [];
  private unflushed: string[] = [];
  private unflushedBytes = 0;
  /** Block bytes received and not yet acknowledged: bounded by MAX_UNACKED_BYTES. */
  private unackedBytes = 0;
  private flushTimer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private stored = 0;
  private bytesSent: number;
  private bytesStored: number;
  private blocksSent: number;
  private files = 0;
  private bytes = 0;
  private blocks = 0;
  private lastProgressWrite = 0;
  private result: ((outcome: BackupOutcome) => void) | undefined;
  /** The base recovery point's blocks this agent owns, looked up once (ownedFromBase). */
  private baseOwned: Promise<Set<string>> = Promise.resolve(new Set());

  constructor(
    private readonly deps: BackupDeps,
    private readonly link: AgentLink,
    private readonly job: JobRow,
    private readonly ds: Datasource,
    private readonly baseRpId: string | null,
    private readonly origin: RecoveryPointOrigin = 'manual',
  ) {
    this.packs = deps.store.newWriter();
    // A resumed job keeps counting from where its earlier attempts stopped.
    this.bytesSent = job.bytesSent;
    this.bytesStored = job.bytesStored;
    this.blocksSent = job.blocksSent;
  }

  /** Runs the backup to its end; resolves with the new recovery point or the reason it failed. */
  async run(): Promise<BackupOutcome> {
    this.writer = await this.deps.manifests.createWriter(this.rpId);
    const outcome = new Promise<BackupOutcome>((resolve) => {
      this.result = resolve;
    });
    const release = this.link.attach(this.job.id, (m) => this.onMessage(m));
    // A dropped link can resume later; a protocol violation fails the job.
    const unClose = this.link.onClose((reason, violation) =>
      this.finish({ ok: false, error: `agent disconnected: ${reason}`, resumable: !violation }),
    );
    try {
      const started = this.link.send({
        t: 'backup.start',
        jobId: this.job.id,
        datasourceId: this.ds.id,
        path: this.ds.path,
        kind: this.ds.kind,
        blockSize: this.ds.blockSize,
        baseRpId: this.baseRpId,
        compress: this.ds.compress,
        preScript: this.ds.preScript,
        postScript: this.ds.postScript,
        resume: this.job.attempts > 0,
      });
      // The link may drop between picking the job and starting it: that is an interruption too.
      started.catch((err: Error) => this.fail(err));
      // A base that cannot be read leaves every block to the lookups as entries arrive.
      if (this.baseRpId) this.baseOwned = this.ownedFromBase(this.baseRpId).catch(() => new Set());
      const result = await outcome;
      if (!result.ok)
        await this.link
          .send({ t: 'backup.abort', jobId: this.job.id, message: result.error })
          .catch(() => {});
      return result;
    } finally {
      release();
      unClose();
      clearTimeout(this.flushTimer);
      await this.verifying.settle().catch(() => {}); // its failure already decided the outcome
      await this.flushing.catch(() => {});
      await this.packs.close();
      await this.writer.discard();
    }
  }

  /** Counters for a failed job: what was moved before it stopped. */
  counters() {
    return { bytesSent: this.bytesSent, bytesStored: this.bytesStored, blocksSent: this.blocksSent };
  }

  private finish(outcome: BackupOutcome): void {
    this.result?.(outcome);
    this.result = undefined;
  }

  private async onMessage(m: JobMessage): Promise<void> {
    if (!this.result) return; // already finished; late frames are dropped
    try {
      switch (m.t) {
        case 'backup.offer':
          return await this.onOffer(m);
        case 'backup.block':
          return this.onBlock(m);
        case 'backup.blocks':
          for (const b of m.blocks) this.onBlock(b);
          return;
        case 'backup.entries':
          return await this.onEntries(m.entries);
        case 'backup.progress':
          return await this.onProgress(m);
        case 'backup.end':
          return await this.onEnd(m);
        case 'backup.fail':
          return this.finish({ ok: false, error: m.message });
        default:
          throw new ProtocolError('PROTO_ERR_UNEXPECTED', `"${m.t}" is not part of a backup`);
      }
    } catch (err) {
      this.fail(err);
      throw err;
    }
  }

  private fail(err: unknown): void {
    const message = (err as Error).message;
    this.finish({
      ok: false,
      error: err instanceof ProtocolError ? `${err.code}: ${message}` : message,
      // A send that failed because the link dropped is an interruption, like the close itself.
      resumable: err instanceof LinkDownError,
    });
  }

  private async onOffer(m: AgentMessageOf<'backup.offer'>): Promise<void> {
    const candidates = new Set<string>();
    for (const h of m.hashes) {
      const hex = hashHex(h);
      if (!this.pending.has(hex) && !this.received.has(hex)) candidates.add(hex);
    }
    // Owned blocks are not needed; stored ones this agent never uploaded are, once, as proof.
    const stored = await touchStoredChunks(
      this.deps.db,
      this.link.agentId,
      [...candidates],
      touchAfterMsOf(this.deps.store.gcGraceMs),
    );
    const need: Buffer[] = [];
    for (const hex of candidates) {
      const owned = stored.get(hex);
      if (owned) continue;
      this.pending.add(hex);
      if (owned === false) this.proofOnly.add(hex);
      need.push(Buffer.from(hex, 'hex'));
    }
    await this.link.send({ t: 'backup.need', jobId: this.job.id, seq: m.seq, hashes: need });
  }

  private onBlock(m: Pick<AgentMessageOf<'backup.block'>, 'hash' | 'enc' | 'data'>): void {
    const hex = hashHex(m.hash);
    if (!this.pending.delete(hex))
      throw new ProtocolError('PROTO_ERR_UNEXPECTED', `block ${hex} was not requested`);
    this.unackedBytes += m.data.length;
    if (this.unackedBytes > MAX_UNACKED_BYTES) {
      throw new ProtocolError(
        'PROTO_ERR_UNEXPECTED',
        `more than ${MAX_UNACKED_BYTES} bytes of blocks sent without acknowledgement`,
      );
    }
    // Counted as received at once: entries naming it may arrive before its verification ends
    // (a failed verification fails the whole backup, so nothing unverified is ever committed).
    this.received.add(hex);
    this.verifyBatch.push({ hash: m.hash, enc: m.enc, data: m.data, hex });
    this.verifyBatchBytes += m.data.length;
    if (this.verifyBatchBytes >= VERIFY_BATCH_BYTES || this.verifyBatch.length >= VERIFY_BATCH_BLOCKS) {
      void this.dispatchVerify();
    } else if (!this.verifyScheduled) {
      // Frames of one socket read arrive back to back: batch them, then dispatch.
      this.verifyScheduled = true;
      setImmediate(() => void this.dispatchVerify());
    }
  }

  private async dispatchVerify(): Promise<void> {
    this.verifyScheduled = false;
    if (this.verifyBatch.length === 0) return;
    const batch = this.verifyBatch;
    this.verifyBatch = [];
    this.verifyBatchBytes = 0;
    try {
      await this.verifying.add(() => this.verifyAndStore(batch));
    } catch (err) {
      this.onFatal(err);
    }
  }

  private async verifyAndStore(batch: PendingBlock[]): Promise<void> {
    const shared = this.takeBatchBuffer(batch.reduce((n, b) => n + b.data.length, 0));
    const task: VerifyTask = {
      blocks: packBlocksInto(shared, batch),
      hashes: Buffer.concat(batch.map((b) => b.hash)),
      encodings: batch.map((b) => b.enc),
    };
    let results: VerifyResult[];
    try {
      results = await this.deps.verifyPool.run(task);
    } catch (err) {
      this.onFatal(err);
      throw err;
    } finally {
      this.batchBuffers.push(shared);
    }
    try {
      await this.storeVerified(batch, results);
    } catch (err) {
      this.onFatal(err);
      throw err;
    }
  }

  /**
   * A shared buffer for one verification batch, from those earlier batches used. Copying into
   * one of a few reused buffers (rather than moving a new one to the worker per batch) leaves
   * the worker nothing to collect: moved batches piled up there by tens of MiB per thread.
   */
  private takeBatchBuffer(size: number): SharedArrayBuffer {
    const i = this.batchBuffers.findIndex((b) => b.byteLength >= size);
    if (i >= 0) return this.batchBuffers.splice(i, 1)[0]!;
    return new SharedArrayBuffer(Math.max(size, VERIFY_BATCH_BYTES + MAX_BLOCK_SIZE));
  }

  private async storeVerified(batch: PendingBlock[], results: VerifyResult[]): Promise<void> {
    const toStore: BlockToAppend[] = [];
    for (let i = 0; i < batch.length; i++) {
      const r = results[i]!;
      const b = batch[i]!;
      if (!r.ok) throw new ProtocolError(r.code, `block sent as ${b.hex}: ${r.message}`);
      if (!this.proofOnly.has(b.hex))
        toStore.push({ hash: b.hash, encoding: b.enc, payload: b.data, size: r.size });
    }
    await this.packs.appendMany(toStore);
    for (const b of batch) {
      this.bytesSent += b.data.length;
      this.blocksSent += 1;
      if (!this.proofOnly.has(b.hex)) this.bytesStored += b.data.length;
      this.unflushed.push(b.hex);
      this.unflushedBytes += b.data.length;
    }
    if (this.unflushedBytes >= FLUSH_BYTES) this.scheduleFlush(0);
    else this.scheduleFlush(FLUSH_MS);
  }

  /** A failure outside the frame loop (pool, disk): fail the job, and close the link for protocol errors. */
  private onFatal(err: unknown): void {
    if (!this.result) return;
    this.fail(err);
    if (err instanceof ProtocolError) this.link.fail(err);
  }

  private scheduleFlush(delayMs: number): void {
    if (!this.result) return; // finished: the final flush (or none, on failure) already happened
    if (delayMs > 0 && this.flushTimer) return;
    clearTimeout(this.flushTimer);
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flushing = this.flushing.then(() => this.flush()).catch((err) => this.onFatal(err));
    }, delayMs);
  }

  /** Group commit: fsync packs, then index + ownership rows in one transaction, then acknowledge. */
  private async flush(): Promise<void> {
    const hexes = this.unflushed;
    const bytes = this.unflushedBytes;
    this.unflushed = [];
    this.unflushedBytes = 0;
    const locations: ChunkLocation[] = await this.packs.flush();
    if (hexes.length === 0 && locations.length === 0) return;
    await this.deps.db.transaction(async (tx) => {
      await indexChunks(tx, locations);
      // Ownership only of blocks the index holds: an owned block is always a stored block.
      const unique = [...new Set(hexes)];
      const indexed = await countIndexed(tx, unique);
      if (indexed !== unique.length) {
        throw new Error(
          `internal error: ${unique.length - indexed} acknowledged blocks are not in the chunk index`,
        );
      }
      await recordOwnership(tx, this.link.agentId, unique);
    });
    this.stored += hexes.length;
    this.unackedBytes -= bytes;
    if (this.result)
      await this.link.send({ t: 'backup.ack', jobId: this.job.id, stored: this.stored }).catch(() => {});
  }

  private async onEntries(entries: Entry[]): Promise<void> {
    if (this.ds.kind === 'image' && (entries.length !== 1 || this.files > 0 || entries[0]?.type !== 'file')) {
      throw new ProtocolError('PROTO_ERR_UNEXPECTED', 'an image backup has exactly one file entry');
    }
    // Every named block must be pending or received in this session, or owned from before.
    const unknown = new Set<string>();
    for (const e of entries) {
      if (e.type !== 'file') continue;
      this.files += 1;
      this.bytes += e.size;
      for (const h of e.hashes) {
        if (!h) continue;
        this.blocks += 1;
        const hex = hashHex(h);
        if (!this.pending.has(hex) && !this.received.has(hex)) unknown.add(hex);
      }
    }
    if (unknown.size > 0) {
      const base = await this.baseOwned;
      for (const hex of unknown) if (base.has(hex)) unknown.delete(hex);
    }
    if (unknown.size > 0) {
      const owned = await this.ownedOf([...unknown]);
      for (const hex of unknown) {
        if (owned.has(hex)) continue;
        const path = entries.find(
          (e) => e.type === 'file' && e.hashes.some((h) => h && hashHex(h) === hex),
        )?.path;
        throw new ProtocolError(
          'PROTO_ERR_UNKNOWN_BLOCK',
          `entry "${path}" names block ${hex}, which the server does not hold for this agent (never uploaded by it, or since quarantined or collected)`,
        );
      }
    }
    await this.writer!.append(entries);
  }

  private async onProgress(m: AgentMessageOf<'backup.progress'>): Promise<void> {
    if (Date.now() - this.lastProgressWrite < PROGRESS_WRITE_MS) return;
    this.lastProgressWrite = Date.now();
    await this.deps.db
      .update(jobs)
      .set({
        bytesScanned: m.bytesScanned,
        bytesDone: m.bytesDone,
        bytesTotal: m.bytesTotal,
        bytesSent: this.bytesSent,
        bytesStored: this.bytesStored,
        blocksSent: this.blocksSent,
      })
      .where(eq(jobs.id, this.job.id));
  }

  private async onEnd(m: AgentMessageOf<'backup.end'>): Promise<void> {
    if (this.verifyBatch.length > 0) await this.dispatchVerify();
    await this.verifying.settle();
    if (this.pending.size > 0) {
      throw new ProtocolError(
        'PROTO_ERR_UNEXPECTED',
        `backup ended with ${this.pending.size} requested blocks never sent`,
      );
    }
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    await this.flushing;
    await this.flush();
    // Every block received must now be durable and indexed: never commit an RP around a gap.
    if (this.stored !== this.received.size) {
      throw new Error(
        `internal error: ${this.received.size} blocks received but ${this.stored} made durable`,
      );
    }
    // Durability order: blocks (flushed above), then the manifest, then the row that makes the RP exist.
    await this.writer!.commit();
    if (!this.result) return; // interrupted while finishing: the job was requeued or failed
    await this.deps.db.transaction(async (tx) => {
      // The job row first: only a job still running here may gain a recovery point.
      const updated = await tx
        .update(jobs)
        .set({
          state: 'succeeded',
          finishedAt: sql`now()`,
          leaseUntil: null,
          error: null,
          rpId: this.rpId,
          bytesScanned: m.bytesScanned,
          bytesDone: this.bytes,
          bytesTotal: this.bytes,
          bytesSent: this.bytesSent,
          bytesStored: this.bytesStored,
          blocksSent: this.blocksSent,
          files: this.files,
          warnings: m.warnings,
        })
        .where(
          and(eq(jobs.id, this.job.id), eq(jobs.state, 'running'), eq(jobs.leaseOwner, this.deps.serverId)),
        )
        .returning({ id: jobs.id });
      if (updated.length === 0)
        throw new Error(`job ${this.job.id} is no longer running here; recovery point not committed`);
      await tx.insert(recoveryPoints).values({
        id: this.rpId,
        datasourceId: this.ds.id,
        jobId: this.job.id,
        kind: this.ds.kind,
        origin: this.origin,
        consistency: m.consistency,
        bytes: this.bytes,
        files: this.files,
        blocks: this.blocks,
      });
    });
    await this.link.send({ t: 'backup.done', jobId: this.job.id, rpId: this.rpId }).catch(() => {});
    this.finish({ ok: true, rpId: this.rpId });
  }

  /**
   * An incremental's entries name mostly blocks of the base recovery point, which the agent does
   * not offer again. Looked up a few hundred at a time as entries arrive, each lookup cost a
   * table scan (the planner's choice for so few keys) while this job's frames waited; looked up
   * (and touched) together at the start, while the agent is still reading, they cost one. The
   * agent sends entries in manifest order, so a base larger than the cap has its first blocks
   * looked up here and the rest as they come.
   */
  private async ownedFromBase(rpId: string): Promise<Set<string>> {
    const hexes = new Set<string>();
    scan: for await (const batch of this.deps.manifests.read(rpId)) {
      for (const e of batch) {
        if (e.type !== 'file') continue;
        for (const h of e.hashes) {
          if (hexes.size >= BASE_LOOKUP_MAX) break scan;
          if (h) hexes.add(hashHex(h));
        }
      }
    }
    return this.ownedOf([...hexes]);
  }

  /**
   * Which of these hashes this agent already owns, touching them (chunk-touch.ts): a block
   * garbage collection removed meanwhile is not owned, and is asked for again.
   */
  private ownedOf(hexes: string[]): Promise<Set<string>> {
    return touchOwnedChunks(
      this.deps.db,
      this.link.agentId,
      hexes,
      touchAfterMsOf(this.deps.store.gcGraceMs),
    );
  }
}

/** The blocks' bytes back to back in `shared` (PackedBlocks' layout; the worker only reads them). */
function packBlocksInto(shared: SharedArrayBuffer, batch: PendingBlock[]): PackedBlocks {
  const view = new Uint8Array(shared);
  let at = 0;
  for (const b of batch) {
    view.set(b.data, at);
    at += b.data.length;
  }
  return { buffer: shared as unknown as ArrayBuffer, lengths: batch.map((b) => b.data.length) };
}
