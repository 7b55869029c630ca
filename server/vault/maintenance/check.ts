import { packPath } from '../backends/backend.ts';
import { sha256Hex } from '../format/id.ts';
import { indexFromJson, VaultIndex } from '../format/index-file.ts';
import type { VaultLock } from '../format/locks.ts';
import {
  type BlobType,
  decodeBlob,
  expectedPackSize,
  type PackEntry,
  parsePackHeader,
} from '../format/pack.ts';
import type { VaultRepository } from '../format/repository.ts';
import { parseHoldfastTags, type Snapshot } from '../format/snapshot.ts';
import { decodeTree, type TreeNode } from '../format/tree.ts';
import { loadJsonFile } from '../format/unpacked.ts';
import { withLock } from './lock.ts';
import { softDeletedAt } from './soft-delete.ts';

/**
 * Vault check, the counterpart of `restic check [--read-data]`, reporting each problem with
 * the snapshots (and Holdfast recovery points) it affects, so the caller can flag them.
 *
 * Structure (always): every index file loads; every pack an index names exists with exactly
 * the size its entries imply; every snapshot loads; every tree reachable from a snapshot is in
 * the index, reads, decodes and is well-formed; every file's content blobs are indexed data
 * blobs. With `readData`: every pack is read whole, hashes to its name, its header decrypts and
 * matches the index entry for entry, and every blob decrypts, decompresses and hashes to its id.
 *
 * Packs no index names are warnings (leftovers of interrupted uploads or prunes; prune deletes
 * them), as in restic. Takes a shared lock by default: backups may run alongside; prune
 * (exclusive) may not.
 */

export interface AffectedSnapshot {
  snapshotId: string;
  time: string;
  hostname?: string;
  paths: string[];
  recoveryPointId?: string;
  datasourceId?: string;
  group?: string;
  softDeleted: boolean;
}

export type CheckErrorKind =
  | 'index-unreadable'
  | 'snapshot-unreadable'
  | 'pack-missing'
  | 'pack-size'
  | 'pack-damaged'
  | 'blob-not-indexed'
  | 'tree-unreadable'
  | 'tree-invalid';

export interface CheckError {
  kind: CheckErrorKind;
  message: string;
  packId?: string;
  /** The blobs concerned (damaged, missing, or all of a missing pack's). */
  blobs?: { type: BlobType; id: string }[];
  /** Snapshots that need any of these blobs (directly or below their trees). */
  affectedSnapshots: AffectedSnapshot[];
}

export interface CheckReport {
  ok: boolean;
  errors: CheckError[];
  warnings: string[];
  /** Every snapshot some error affects (union over errors). */
  affectedSnapshots: AffectedSnapshot[];
  stats: {
    snapshots: number;
    indexFiles: number;
    packs: number;
    treesChecked: number;
    dataBlobsReferenced: number;
    packsRead: number;
    bytesRead: number;
  };
}

export interface CheckOptions {
  readData?: boolean;
  /** A lock the caller holds; default: take a shared one. */
  lock?: VaultLock;
  lockRecheckDelayMs?: number;
}

export function checkVault(repo: VaultRepository, options: CheckOptions = {}): Promise<CheckReport> {
  return withLock(
    repo,
    {
      exclusive: false,
      ...(options.lock && { lock: options.lock }),
      ...(options.lockRecheckDelayMs !== undefined && { recheckDelayMs: options.lockRecheckDelayMs }),
    },
    () => new Checker(repo).run(options.readData ?? false),
  );
}

const bkey = (type: BlobType, id: string) => `${type}:${id}`;

class Checker {
  private readonly errors = new Map<string, Omit<CheckError, 'affectedSnapshots'>>();
  /** blob key -> key of the error that makes it unusable */
  private readonly badBlobs = new Map<string, string>();
  private readonly warnings: string[] = [];
  private readonly index = new VaultIndex();
  private readonly treeMemo = new Map<string, Promise<Set<string>>>();
  private readonly dataSeen = new Set<string>();
  private readonly stats: CheckReport['stats'] = {
    snapshots: 0,
    indexFiles: 0,
    packs: 0,
    treesChecked: 0,
    dataBlobsReferenced: 0,
    packsRead: 0,
    bytesRead: 0,
  };

  constructor(private readonly repo: VaultRepository) {}

  private addError(k: string, e: Omit<CheckError, 'affectedSnapshots'>): string {
    if (!this.errors.has(k)) this.errors.set(k, e);
    return k;
  }

  async run(readData: boolean): Promise<CheckReport> {
    const { repo } = this;
    // snapshots first, then the index (a backup running alongside adds index before snapshot)
    const snapshots: { id: string; snapshot: Snapshot }[] = [];
    for await (const { path } of repo.backend.list('snapshots')) {
      const id = path.slice('snapshots/'.length);
      try {
        snapshots.push({ id, snapshot: await repo.loadSnapshot(id) });
      } catch (err) {
        this.addError(`snapshot:${id}`, {
          kind: 'snapshot-unreadable',
          message: `snapshot ${id}: ${(err as Error).message}`,
        });
      }
    }
    for await (const { path } of repo.backend.list('index')) {
      const id = path.slice('index/'.length);
      this.stats.indexFiles++;
      try {
        this.index.add(indexFromJson(await loadJsonFile(repo.backend, repo.key, 'index', id), path));
      } catch (err) {
        this.addError(`index:${id}`, {
          kind: 'index-unreadable',
          message: `${path}: ${(err as Error).message}`,
        });
      }
    }
    const onDisk = new Map<string, number>();
    for await (const { path, size } of repo.backend.list('data'))
      onDisk.set(path.slice(path.lastIndexOf('/') + 1), size);
    this.stats.packs = onDisk.size;

    for (const [packId, entries] of this.index.packs) {
      const size = onDisk.get(packId);
      const blobs = entries.map((e) => ({ type: e.type, id: e.id }));
      if (size === undefined) {
        this.markPack(packId, entries, {
          kind: 'pack-missing',
          message: `pack ${packId} is named by the index but does not exist`,
          packId,
          blobs,
        });
      } else if (size !== expectedPackSize(entries)) {
        this.markPack(packId, entries, {
          kind: 'pack-size',
          message: `pack ${packId} has ${size} bytes, the index implies ${expectedPackSize(entries)}`,
          packId,
          blobs,
        });
      } else if (readData) {
        await this.readPack(packId, entries, size);
      }
    }
    for (const id of onDisk.keys())
      if (!this.index.packs.has(id))
        this.warnings.push(`pack ${id} is not named by any index (unused leftover)`);

    // walk every snapshot; each gets the set of error keys it reaches
    const snapErrors = new Map<string, Set<string>>();
    for (const s of snapshots) {
      this.stats.snapshots++;
      snapErrors.set(s.id, await this.walkTree(s.snapshot.tree));
    }
    this.stats.dataBlobsReferenced = this.dataSeen.size;

    const info = new Map(snapshots.map((s) => [s.id, describe(s.id, s.snapshot)]));
    const errors: CheckError[] = [];
    const all = new Set<string>();
    for (const [k, e] of this.errors) {
      const ids = [...snapErrors].filter(([, set]) => set.has(k)).map(([id]) => id);
      for (const id of ids) all.add(id);
      errors.push({ ...e, affectedSnapshots: ids.map((id) => info.get(id)!) });
    }
    return {
      ok: errors.length === 0,
      errors,
      warnings: this.warnings,
      affectedSnapshots: [...all].map((id) => info.get(id)!),
      stats: this.stats,
    };
  }

  private markPack(packId: string, blobs: PackEntry[], error: Omit<CheckError, 'affectedSnapshots'>): void {
    const k = this.addError(`pack:${packId}`, error);
    for (const b of blobs) this.badBlobs.set(bkey(b.type, b.id), k);
  }

  private async readPack(packId: string, entries: PackEntry[], size: number): Promise<void> {
    const { repo } = this;
    const bytes = await repo.backend.load(packPath(packId));
    this.stats.packsRead++;
    this.stats.bytesRead += bytes.length;
    const problems: string[] = [];
    const damaged: PackEntry[] = [];
    if (sha256Hex(bytes) !== packId) problems.push('content does not hash to its name');
    let header: PackEntry[] | undefined;
    try {
      const parsed = parsePackHeader(repo.key, bytes, size, `pack ${packId}`);
      if ('entries' in parsed) header = parsed.entries;
    } catch (err) {
      problems.push(`header: ${(err as Error).message}`);
    }
    if (header && !sameEntries(header, entries)) problems.push('header does not match the index');
    for (const e of entries) {
      try {
        decodeBlob(repo.key, bytes.subarray(e.offset, e.offset + e.length), e);
      } catch (err) {
        damaged.push(e);
        problems.push(`${e.type} blob ${e.id}: ${(err as Error).message}`);
      }
    }
    if (problems.length === 0) return;
    // an unreadable header alone leaves the blobs readable through the index; flag only damaged blobs
    this.markPack(packId, damaged, {
      kind: 'pack-damaged',
      message: `pack ${packId}: ${problems.join('; ')}`,
      packId,
      blobs: damaged.map((e) => ({ type: e.type, id: e.id })),
    });
  }

  /** The error keys a tree reaches (memoised: shared subtrees are read once). */
  private walkTree(treeId: string): Promise<Set<string>> {
    let p = this.treeMemo.get(treeId);
    if (!p) {
      p = this.walkTreeUncached(treeId);
      this.treeMemo.set(treeId, p);
    }
    return p;
  }

  private async walkTreeUncached(treeId: string): Promise<Set<string>> {
    const out = new Set<string>();
    const tk = bkey('tree', treeId);
    const bad = this.badBlobs.get(tk);
    if (bad) return out.add(bad);
    const loc = this.index.get('tree', treeId);
    if (!loc) {
      return out.add(
        this.addError(`missing:${tk}`, {
          kind: 'blob-not-indexed',
          message: `tree ${treeId} is in no index`,
          blobs: [{ type: 'tree', id: treeId }],
        }),
      );
    }
    let nodes: TreeNode[];
    try {
      nodes = decodeTree(await this.readBlob(loc.packId, loc), `tree ${treeId}`);
    } catch (err) {
      return out.add(
        this.addError(`unreadable:${tk}`, {
          kind: 'tree-unreadable',
          message: `tree ${treeId} in pack ${loc.packId}: ${(err as Error).message}`,
          packId: loc.packId,
          blobs: [{ type: 'tree', id: treeId }],
        }),
      );
    }
    this.stats.treesChecked++;
    for (const node of nodes) {
      const problem = nodeProblem(node);
      if (problem) {
        out.add(
          this.addError(`invalid:${tk}`, {
            kind: 'tree-invalid',
            message: `tree ${treeId}: ${problem}`,
            blobs: [{ type: 'tree', id: treeId }],
          }),
        );
        continue;
      }
      if (node.type === 'file') {
        for (const id of node.content ?? []) {
          const dk = bkey('data', id);
          this.dataSeen.add(id);
          const b = this.badBlobs.get(dk);
          if (b) out.add(b);
          else if (!this.index.has('data', id)) {
            out.add(
              this.addError(`missing:${dk}`, {
                kind: 'blob-not-indexed',
                message: `data blob ${id} is in no index`,
                blobs: [{ type: 'data', id }],
              }),
            );
          }
        }
      } else if (node.type === 'dir' && node.subtree) {
        for (const k of await this.walkTree(node.subtree)) out.add(k);
      }
    }
    return out;
  }

  private async readBlob(packId: string, entry: PackEntry): Promise<Buffer> {
    const stored = await this.repo.backend.load(packPath(packId), {
      offset: entry.offset,
      length: entry.length,
    });
    return decodeBlob(this.repo.key, stored, entry);
  }
}

function nodeProblem(node: TreeNode): string | undefined {
  if (node.type === 'file' && !Array.isArray(node.content))
    return `file ${JSON.stringify(node.name)} has no content list`;
  if (node.type === 'dir' && !node.subtree) return `directory ${JSON.stringify(node.name)} has no subtree`;
  return undefined;
}

function sameEntries(a: PackEntry[], b: PackEntry[]): boolean {
  if (a.length !== b.length) return false;
  const sortKey = (e: PackEntry) => e.offset;
  const x = [...a].sort((p, q) => sortKey(p) - sortKey(q));
  const y = [...b].sort((p, q) => sortKey(p) - sortKey(q));
  return x.every(
    (e, i) =>
      e.id === y[i]!.id &&
      e.type === y[i]!.type &&
      e.offset === y[i]!.offset &&
      e.length === y[i]!.length &&
      (e.uncompressedLength ?? 0) === (y[i]!.uncompressedLength ?? 0),
  );
}

function describe(id: string, s: Snapshot): AffectedSnapshot {
  const tags = parseHoldfastTags(s.tags);
  return {
    snapshotId: id,
    time: s.time,
    ...(s.hostname !== undefined && { hostname: s.hostname }),
    paths: s.paths,
    ...(tags?.recoveryPointId !== undefined && { recoveryPointId: tags.recoveryPointId }),
    ...(tags?.datasourceId !== undefined && { datasourceId: tags.datasourceId }),
    ...(tags?.group !== undefined && { group: tags.group }),
    softDeleted: softDeletedAt(s.tags) !== undefined,
  };
}
