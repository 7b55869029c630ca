import { randomBytes, randomUUID } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { and, count, desc, eq, inArray, isNotNull, isNull, sql, sum } from 'drizzle-orm';
import type { Logger } from 'pino';
import type { Piscina } from 'piscina';
import { createWorkerPool } from '../../lib/worker-pool.ts';
import { DEFAULT_BLOCK_SIZE } from '../../protocol/version.ts';
import type { ChunkStore } from '../chunk-store/chunk-store.ts';
import { dataPaths } from '../config.ts';
import type { Db } from '../db/database.ts';
import { agents, datasources, jobs, recoveryPoints, vaultBlobs, vaultPacks, vaults } from '../db/schema.ts';
import { AppError } from '../errors.ts';
import { AGENT_NAME } from '../identity/enrollment.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { packPath, type VaultBackend } from './backends/backend.ts';
import { VaultConfigError } from './backends/errors.ts';
import type { BackendLogger } from './backends/retry.ts';
import { type BackendSpec, backendSpecSchema, openBackend, readSecretFile } from './backends/open-backend.ts';
import { VaultError, VaultPassphraseError } from './format/errors.ts';
import { indexFromJson } from './format/index-file.ts';
import { MIN_PASSPHRASE_LENGTH } from './format/keys.ts';
import { removeStaleLocks } from './format/locks.ts';
import { expectedPackSize } from './format/pack.ts';
import { VaultRepository } from './format/repository.ts';
import { parseHoldfastTags, type Snapshot } from './format/snapshot.ts';
import { loadJsonFile } from './format/unpacked.ts';
import { recordPackIn } from './vault-mirror.ts';
import { VaultPointReader } from './vault-restore.ts';

/*
 * The vault as the server knows it: one restic repository (docs/vault.md), described by a
 * `vaults` row (backend spec and the passphrase file, never secrets), mirrored in vault_packs and
 * vault_blobs. create makes a new repository, attach opens an existing one, checks the
 * passphrase, rebuilds the mirror from its index and the catalog of vault recovery points from
 * its snapshots (disaster recovery of the server itself), status reports sizes.
 */

export type VaultRow = typeof vaults.$inferSelect;

export interface VaultSetupInput {
  backend: BackendSpec;
  passphraseFile: string;
}

/** What Holdfast writes into each snapshot besides restic's fields, to rebuild its catalog from the vault. */
export interface HoldfastSnapshotMeta {
  kind: 'files' | 'image';
  blockSize: number;
  consistency: 'app-consistent' | 'file-consistent' | 'crash-consistent';
  origin: 'manual' | 'sync' | 'recovery-point' | 'express-full' | 'consistency-check';
  bytes: number;
  files: number;
  blocks: number;
  sourceRpId: string;
}

export interface VaultServiceDeps {
  db: Db;
  store: ChunkStore;
  manifests: ManifestStore;
  log: Logger;
  dataDir: string;
}

export interface AttachReport {
  vault: ReturnType<typeof vaultView>;
  packs: number;
  blobs: number;
  snapshots: number;
  recoveryPointsAdded: number;
  agentsAdded: string[];
  datasourcesAdded: number;
  /** Snapshots restic itself made (no holdfast tags): listed by restic, not restorable through Holdfast. */
  foreignSnapshots: number;
}

function vaultView(row: VaultRow) {
  return {
    id: row.id,
    name: row.name,
    backend: row.backend,
    passphraseFile: row.passphraseFile,
    repositoryId: row.repositoryId,
    createdAt: row.createdAt.toISOString(),
  };
}

/** Errors of the vault layers as API errors, with their own (secret-free) messages. */
export function asAppError(err: unknown): unknown {
  if (err instanceof AppError) return err;
  if (err instanceof VaultPassphraseError) return new AppError('INVALID_INPUT', err.message);
  if (err instanceof VaultConfigError) return new AppError('INVALID_INPUT', err.message);
  if (err instanceof VaultError) return new AppError('CONFLICT', err.message);
  return err;
}

export class VaultService {
  private opened: { row: VaultRow; repo: VaultRepository } | undefined;
  private packPool: Piscina | undefined;

  constructor(readonly deps: VaultServiceDeps) {}

  /**
   * The pool that reads, compresses, encrypts and assembles packs (created on first use): a
   * thread per core up to 4 (the main thread only schedules, uploads and records), or
   * HOLDFAST_VAULT_WORKERS threads (bench, tuning).
   */
  pool(): Piscina {
    if (this.packPool) return this.packPool;
    const fromEnv = Number(process.env.HOLDFAST_VAULT_WORKERS);
    const pool = createWorkerPool(
      new URL('./pack-worker.ts', import.meta.url),
      Number.isInteger(fromEnv) && fromEnv >= 1 ? fromEnv : Math.min(4, os.availableParallelism()),
      // Threads end soon after the last pack: until a thread ends (or collects its garbage,
      // which an idle one does not) it keeps the pack slots it was lent alive.
      { idleTimeoutMs: 1000 },
    );
    // Once threads have ended, the slots (shared memory, over 100 MiB) are held only by this
    // thread's dead references: the pool's ending threads start a collection and give the
    // memory back (lib/release-memory.ts).
    this.packPool = pool;
    return pool;
  }

  async close(): Promise<void> {
    await this.packPool?.destroy();
    this.packPool = undefined;
  }

  /** The backend spec with the default local folder filled in and paths made absolute. */
  private normalizeSpec(spec: BackendSpec): BackendSpec {
    const parsed = backendSpecSchema.safeParse(
      spec.type === 'local' && !spec.path ? { ...spec, path: dataPaths(this.deps.dataDir).vault } : spec,
    );
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new AppError(
        'INVALID_INPUT',
        `invalid vault backend: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}`,
      );
    }
    const s = parsed.data;
    if (s.type === 'local') return { ...s, path: path.resolve(s.path) };
    if (s.type === 'azure') return { ...s, connectionStringFile: path.resolve(s.connectionStringFile) };
    return { ...s, credentialsFile: path.resolve(s.credentialsFile) };
  }

  private async readPassphrase(file: string): Promise<string> {
    let text: string;
    try {
      text = await readSecretFile(file, 'vault passphrase');
    } catch (err) {
      throw asAppError(err);
    }
    // The file's last line break is not part of the passphrase (echo ... > file).
    return text.replace(/\r?\n$/, '');
  }

  async get(): Promise<VaultRow | undefined> {
    const [row] = await this.deps.db.select().from(vaults).where(eq(vaults.name, 'default'));
    return row;
  }

  /** The open repository of the configured vault. */
  async repo(): Promise<VaultRepository> {
    const row = await this.get();
    if (!row)
      throw new AppError('CONFLICT', 'no vault is configured (holdfast vault create or vault attach)');
    if (this.opened && this.opened.row.id === row.id && this.opened.row.repositoryId === row.repositoryId)
      return this.opened.repo;
    try {
      const backend = await openBackend(row.backend as BackendSpec, { log: this.backendLog() });
      const repo = await VaultRepository.open(backend, await this.readPassphrase(row.passphraseFile));
      this.opened = { row, repo };
      await this.clearStaleLocks(repo);
      return repo;
    } catch (err) {
      throw asAppError(err);
    }
  }

  /**
   * What `restic unlock` does, once per process when it first opens the vault: a Holdfast
   * process (or restic run) that crashed left its lock behind, and restic's exclusive
   * operations (check, prune) refuse to run beside any lock, stale or not.
   */
  private async clearStaleLocks(repo: VaultRepository): Promise<void> {
    try {
      const removed = await removeStaleLocks(repo);
      if (removed.length > 0) this.deps.log.info({ locks: removed }, 'stale vault locks removed');
    } catch (err) {
      this.deps.log.warn({ err: (err as Error).message }, 'cannot look for stale vault locks');
    }
  }

  private backendLog(): BackendLogger {
    return this.deps.log.child({ part: 'vault' });
  }

  async create(input: VaultSetupInput): Promise<ReturnType<typeof vaultView>> {
    if (await this.get())
      throw new AppError('CONFLICT', 'a vault is already configured; this server keeps one vault');
    const spec = this.normalizeSpec(input.backend);
    const passphraseFile = path.resolve(input.passphraseFile);
    const passphrase = await this.readPassphrase(passphraseFile);
    if (passphrase.length < MIN_PASSPHRASE_LENGTH) {
      throw new AppError(
        'INVALID_INPUT',
        `the vault passphrase must have at least ${MIN_PASSPHRASE_LENGTH} characters (${passphraseFile} holds ${passphrase.length})`,
      );
    }
    let repo: VaultRepository;
    try {
      const backend = await openBackend(spec, { create: true, log: this.backendLog() });
      repo = await VaultRepository.init(backend, passphrase);
    } catch (err) {
      throw asAppError(err);
    }
    const [row] = await this.deps.db
      .insert(vaults)
      .values({ id: randomUUID(), backend: spec, passphraseFile, repositoryId: repo.config.id })
      .returning();
    this.opened = { row: row!, repo };
    this.deps.log.info({ vault: repo.backend.name, repositoryId: repo.config.id }, 'vault created');
    return vaultView(row!);
  }

  /**
   * Opens an existing vault (Holdfast's or restic's): checks the passphrase (a wrong one
   * changes nothing, here or in the vault), then rebuilds the mirror and the catalog.
   */
  async attach(input: VaultSetupInput): Promise<AttachReport> {
    const spec = this.normalizeSpec(input.backend);
    const passphraseFile = path.resolve(input.passphraseFile);
    const passphrase = await this.readPassphrase(passphraseFile);
    let repo: VaultRepository;
    try {
      const backend = await openBackend(spec, { log: this.backendLog() });
      repo = await VaultRepository.open(backend, passphrase);
    } catch (err) {
      throw asAppError(err);
    }
    const existing = await this.get();
    if (existing && existing.repositoryId !== repo.config.id) {
      throw new AppError(
        'CONFLICT',
        `another vault (repository ${existing.repositoryId.slice(0, 8)}) is configured; this server keeps one vault`,
      );
    }
    const { packs, blobs } = await this.rebuildMirror(repo.backend, repo);
    const { db } = this.deps;
    let row: VaultRow;
    if (existing) {
      [row] = (await db
        .update(vaults)
        .set({ backend: spec, passphraseFile })
        .where(eq(vaults.id, existing.id))
        .returning()) as [VaultRow];
    } else {
      [row] = (await db
        .insert(vaults)
        .values({ id: randomUUID(), backend: spec, passphraseFile, repositoryId: repo.config.id })
        .returning()) as [VaultRow];
    }
    this.opened = { row, repo };
    const catalog = await this.rebuildCatalog(repo);
    this.deps.log.info({ vault: repo.backend.name, packs, blobs, ...catalog }, 'vault attached');
    return { vault: vaultView(row), packs, blobs, ...catalog };
  }

  /**
   * Rebuilds the mirror from the configured vault's index files: for whatever rewrote the index
   * (vault prune, server/vault/maintenance) or after a mirror was lost.
   */
  async refreshMirror(): Promise<{ packs: number; blobs: number }> {
    const repo = await this.repo();
    return this.syncMirror(repo, { force: true });
  }

  /**
   * Brings the mirror in line with the vault's index files when something rewrote them (a vault
   * prune, Holdfast's or restic's): an index file the mirror names is gone. Call it under a vault
   * lock (prune, which rewrites the index, needs an exclusive one, so it cannot run meanwhile).
   *
   * Safe beside online backups in other processes: only packs named by index files the mirror
   * knew before listing are replaced (an index file is written before its packs are marked, so
   * any of those is in the listing and reloaded); packs recorded but not yet indexed stay,
   * unless `dropMissingUnindexed` and their file is gone (a prune deletes packs no index names).
   */
  async syncMirror(
    repo: VaultRepository,
    options: { force?: boolean; dropMissingUnindexed?: boolean } = {},
  ): Promise<{
    rebuilt: boolean;
    packs: number;
    blobs: number;
    staleIndexes: number;
    unindexedDropped: number;
  }> {
    const { db } = this.deps;
    const known = new Set(
      (
        await db
          .selectDistinct({ id: vaultPacks.indexId })
          .from(vaultPacks)
          .where(isNotNull(vaultPacks.indexId))
      )
        .map((r) => r.id!)
        .filter(Boolean),
    );
    const listed: string[] = [];
    for await (const { path: p } of repo.backend.list('index')) listed.push(p.slice('index/'.length));
    const present = new Set(listed);
    const stale = [...known].filter((id) => !present.has(id));
    let packs = 0;
    let blobs = 0;
    const rebuilt = Boolean(options.force) || stale.length > 0;
    if (rebuilt) {
      const files: {
        indexId: string;
        packs: { id: string; blobs: import('./format/pack.ts').PackEntry[] }[];
      }[] = [];
      for (const indexId of listed) {
        const content = indexFromJson(
          await loadJsonFile(repo.backend, repo.key, 'index', indexId),
          `index/${indexId}`,
        );
        files.push({ indexId, packs: content.packs });
      }
      await db.transaction(async (tx) => {
        const replaced = [...known];
        for (let i = 0; i < replaced.length; i += 1000) {
          const slice = replaced.slice(i, i + 1000);
          const ids = (
            await tx.select({ id: vaultPacks.id }).from(vaultPacks).where(inArray(vaultPacks.indexId, slice))
          ).map((r) => r.id);
          for (let j = 0; j < ids.length; j += 1000) {
            await tx.delete(vaultBlobs).where(inArray(vaultBlobs.packId, ids.slice(j, j + 1000)));
            await tx.delete(vaultPacks).where(inArray(vaultPacks.id, ids.slice(j, j + 1000)));
          }
        }
        const seen = new Set<string>();
        for (const f of files) {
          for (const pack of f.packs) {
            if (seen.has(pack.id)) continue;
            seen.add(pack.id);
            await recordPackIn(tx, {
              id: pack.id,
              type: pack.blobs[0]?.type ?? 'data',
              size: expectedPackSize(pack.blobs),
              entries: pack.blobs,
              indexId: f.indexId,
            });
            packs += 1;
            blobs += pack.blobs.length;
          }
        }
      });
    }
    let unindexedDropped = 0;
    if (options.dropMissingUnindexed) {
      const pending = await db
        .select({ id: vaultPacks.id })
        .from(vaultPacks)
        .where(isNull(vaultPacks.indexId));
      for (const { id } of pending) {
        if (await repo.backend.stat(packPath(id))) continue;
        await db.transaction(async (tx) => {
          await tx.delete(vaultBlobs).where(eq(vaultBlobs.packId, id));
          await tx.delete(vaultPacks).where(and(eq(vaultPacks.id, id), isNull(vaultPacks.indexId)));
        });
        unindexedDropped += 1;
      }
    }
    if (rebuilt || unindexedDropped > 0)
      this.deps.log.info(
        { packs, blobs, staleIndexes: stale.length, unindexedDropped },
        'vault mirror brought in line with the index',
      );
    return { rebuilt, packs, blobs, staleIndexes: stale.length, unindexedDropped };
  }

  /** Replaces the mirror with what the vault's index files say. */
  private async rebuildMirror(
    backend: VaultBackend,
    repo: VaultRepository,
  ): Promise<{ packs: number; blobs: number }> {
    const files: {
      indexId: string;
      packs: { id: string; blobs: import('./format/pack.ts').PackEntry[] }[];
    }[] = [];
    for await (const { path: p } of backend.list('index')) {
      const indexId = p.slice('index/'.length);
      const content = indexFromJson(await loadJsonFile(backend, repo.key, 'index', indexId), p);
      files.push({ indexId, packs: content.packs });
    }
    let packs = 0;
    let blobs = 0;
    await this.deps.db.transaction(async (tx) => {
      // Packs recorded but not yet in an index file stay: the next online backup indexes them.
      await tx.execute(
        sql`delete from vault_blobs where pack_id not in (select id from vault_packs where index_id is null)`,
      );
      await tx.delete(vaultPacks).where(isNotNull(vaultPacks.indexId));
      const seen = new Set<string>();
      for (const f of files) {
        for (const pack of f.packs) {
          if (seen.has(pack.id)) continue;
          seen.add(pack.id);
          const type = pack.blobs[0]?.type ?? 'data';
          await recordPackIn(tx, {
            id: pack.id,
            type,
            size: expectedPackSize(pack.blobs),
            entries: pack.blobs,
            indexId: f.indexId,
          });
          packs += 1;
          blobs += pack.blobs.length;
        }
      }
    });
    return { packs, blobs };
  }

  /** One vault recovery point per Holdfast snapshot not yet in the catalog; agents and datasources as needed. */
  private async rebuildCatalog(repo: VaultRepository) {
    const { db } = this.deps;
    let recoveryPointsAdded = 0;
    let datasourcesAdded = 0;
    let foreignSnapshots = 0;
    const agentsAdded: string[] = [];
    const snapshots = await repo.listSnapshots();
    for (const { id: snapshotId, snapshot } of snapshots) {
      const [known] = await db
        .select({ id: recoveryPoints.id })
        .from(recoveryPoints)
        .where(eq(recoveryPoints.snapshotId, snapshotId));
      if (known) continue;
      const tags = parseHoldfastTags(snapshot.tags);
      const meta = (snapshot as Snapshot & { holdfast?: Partial<HoldfastSnapshotMeta> }).holdfast;
      if (!tags || !snapshot.paths[0] || !snapshot.hostname) {
        foreignSnapshots += 1;
        continue;
      }
      const agentName = AGENT_NAME.test(snapshot.hostname)
        ? snapshot.hostname
        : snapshot.hostname.replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 63);
      let [agent] = await db.select().from(agents).where(eq(agents.name, agentName));
      if (!agent) {
        // A placeholder: it cannot authenticate (no credential hashes to this); restore to an enrolled agent.
        [agent] = await db
          .insert(agents)
          .values({
            id: randomUUID(),
            name: agentName,
            hostname: snapshot.hostname,
            secretHash: `unenrolled:${randomBytes(16).toString('hex')}`,
          })
          .returning();
        agentsAdded.push(agentName);
      }
      const dsPath = snapshot.paths[0];
      let kind: 'files' | 'image' = meta?.kind === 'image' ? 'image' : 'files';
      if (!meta?.kind) {
        const top = await new VaultPointReader(db, repo, {
          snapshotId,
          path: dsPath,
          kind,
          blockSize: DEFAULT_BLOCK_SIZE[kind],
        })
          .topNode()
          .catch(() => undefined);
        if (top?.type === 'file') kind = 'image';
      }
      let [ds] = await db
        .select()
        .from(datasources)
        .where(and(eq(datasources.agentId, agent!.id), eq(datasources.path, dsPath)));
      if (!ds) {
        [ds] = await db
          .insert(datasources)
          .values({
            id:
              tags.datasourceId && !(await this.datasourceExists(tags.datasourceId))
                ? tags.datasourceId
                : randomUUID(),
            agentId: agent!.id,
            path: dsPath,
            kind,
            blockSize: meta?.blockSize ?? DEFAULT_BLOCK_SIZE[kind],
          })
          .returning();
        datasourcesAdded += 1;
      }
      const rpId =
        tags.recoveryPointId && !(await this.recoveryPointExists(tags.recoveryPointId))
          ? tags.recoveryPointId
          : randomUUID();
      await db.insert(recoveryPoints).values({
        id: rpId,
        datasourceId: ds!.id,
        jobId: 'vault-attach',
        origin: meta?.origin ?? 'manual',
        createdAt: new Date(snapshot.time),
        tier: 'vault',
        kind: ds!.kind,
        consistency: meta?.consistency ?? 'crash-consistent',
        bytes: meta?.bytes ?? 0,
        files: meta?.files ?? 0,
        blocks: meta?.blocks ?? 0,
        snapshotId,
        sourceRpId: meta?.sourceRpId ?? null,
        groupName: tags.group ?? null,
      });
      recoveryPointsAdded += 1;
    }
    return {
      snapshots: snapshots.length,
      recoveryPointsAdded,
      agentsAdded,
      datasourcesAdded,
      foreignSnapshots,
    };
  }

  private async datasourceExists(id: string): Promise<boolean> {
    return (
      (await this.deps.db.select({ id: datasources.id }).from(datasources).where(eq(datasources.id, id)))
        .length > 0
    );
  }

  private async recoveryPointExists(id: string): Promise<boolean> {
    return (
      (
        await this.deps.db
          .select({ id: recoveryPoints.id })
          .from(recoveryPoints)
          .where(eq(recoveryPoints.id, id))
      ).length > 0
    );
  }

  async status() {
    const row = await this.get();
    if (!row) return { configured: false as const };
    const { db } = this.deps;
    const [packs] = await db.select({ n: count(), size: sum(vaultPacks.size) }).from(vaultPacks);
    const [data] = await db
      .select({
        n: count(),
        stored: sum(vaultBlobs.length),
        plain: sql<string>`sum(coalesce(${vaultBlobs.uncompressedLength}, ${vaultBlobs.length} - 32))`,
      })
      .from(vaultBlobs)
      .where(eq(vaultBlobs.type, 'data'));
    const [points] = await db
      .select({ n: count(), bytes: sum(recoveryPoints.bytes) })
      .from(recoveryPoints)
      .where(and(eq(recoveryPoints.tier, 'vault'), isNull(recoveryPoints.deletedAt)));
    const [lastJob] = await db
      .select()
      .from(jobs)
      .where(eq(jobs.type, 'online-backup'))
      .orderBy(desc(jobs.createdAt))
      .limit(1);
    let snapshots: number | null = null;
    try {
      const repo = await this.repo();
      snapshots = 0;
      for await (const _ of repo.backend.list('snapshots')) snapshots += 1;
    } catch (err) {
      this.deps.log.warn({ err: (err as Error).message }, 'vault status: cannot list snapshots');
    }
    return {
      configured: true as const,
      vault: vaultView(row),
      /** Bytes of pack files in the vault. */
      storedBytes: Number(packs?.size ?? 0),
      packs: Number(packs?.n ?? 0),
      dataBlobs: Number(data?.n ?? 0),
      /** Distinct data once (deduplicated), before compression. */
      deduplicatedBytes: Number(data?.plain ?? 0),
      /** The same after compression (and encryption overhead). */
      compressedBytes: Number(data?.stored ?? 0),
      /** What the vault recovery points hold in all (before deduplication). */
      logicalBytes: Number(points?.bytes ?? 0),
      recoveryPoints: Number(points?.n ?? 0),
      snapshots,
      lastOnlineJob: lastJob
        ? {
            id: lastJob.id,
            state: lastJob.state,
            createdAt: lastJob.createdAt.toISOString(),
            finishedAt: lastJob.finishedAt?.toISOString() ?? null,
            error: lastJob.error,
          }
        : null,
    };
  }

  /** A reader of a vault recovery point, for the restore session. */
  async pointReader(
    rp: { id: string; snapshotId: string | null; kind: 'files' | 'image' },
    ds: { path: string; blockSize: number },
  ): Promise<VaultPointReader> {
    if (!rp.snapshotId) throw new Error(`vault recovery point ${rp.id} has no snapshot`);
    return new VaultPointReader(this.deps.db, await this.repo(), {
      snapshotId: rp.snapshotId,
      path: ds.path,
      kind: rp.kind,
      blockSize: ds.blockSize,
    });
  }
}
