import { packPath } from '../backends/backend.ts';
import { decrypt } from '../format/crypto.ts';
import { VaultError } from '../format/errors.ts';
import type { IndexPack, VaultIndex } from '../format/index-file.ts';
import type { VaultLock } from '../format/locks.ts';
import { type BlobType, expectedPackSize, type PackBlobInput, type PackEntry } from '../format/pack.ts';
import type { VaultRepository } from '../format/repository.ts';
import { decodeTree } from '../format/tree.ts';
import { withLock } from './lock.ts';

/**
 * Prune: frees the space of blobs no snapshot uses any more (after purge/forget), under
 * restic's exclusive lock, leaving a repository `restic check --read-data` accepts at every
 * step. The steps, in this order:
 *
 *  1. List snapshots, load every index file, list the packs in data/.
 *  2. Walk every snapshot's trees (soft-deleted ones too: they must stay restorable): the used
 *     tree and data blobs. A snapshot that needs a blob no index names, or whose pack is missing
 *     or has the wrong size, stops the prune before anything is written (run checkVault).
 *  3. Plan: a pack with no used blob is deleted; a pack whose unused share of blob bytes is
 *     above `maxUnusedFraction` is repacked; the others stay. Where a blob is stored twice,
 *     one copy (in the pack with the most used bytes) is the used one.
 *  4. Repack: each used blob of a repacked pack is read, decrypted, verified against its id
 *     and written again (compressed if it was) into new packs of about `targetPackSize`.
 *  5. Write one new index (as many files as 50 000 blobs per file need) naming every pack
 *     that remains, with `supersedes` = the old index files.
 *  6. Delete the old index files, then the deleted and repacked packs, and packs no index
 *     named (left by interrupted uploads; restic's prune deletes those too).
 *
 * A crash after 4 leaves new packs no index names; after 5 two indexes that both name the
 * kept packs (a hint in restic's check, not an error); during 6 packs no index names. restic
 * reports those as "additional files", never as errors, and the next prune deletes them.
 */

export interface PruneOptions {
  /**
   * A pack is repacked when the unused share of its blob bytes is above this (0..1). 0 repacks
   * every pack with any unused blob; 1 never repacks (only wholly unused packs are deleted).
   * Default 0.1.
   */
  maxUnusedFraction?: number;
  /** Plan and report, write and delete nothing (takes only a shared lock). */
  dryRun?: boolean;
  /** Bytes of blobs per new pack when repacking; default 16 MiB. */
  targetPackSize?: number;
  /** An exclusive lock the caller already holds (e.g. for purge + prune in one job). */
  lock?: VaultLock;
  /** Pause while acquiring the lock (restic's 200 ms); tests shorten it. */
  lockRecheckDelayMs?: number;
}

export interface PruneResult {
  dryRun: boolean;
  snapshots: number;
  packsBefore: number;
  bytesBefore: number;
  /** Packs with no used blob, deleted. */
  packsDeleted: number;
  /** Packs whose used blobs were copied into new packs, then deleted. */
  packsRewritten: number;
  /** Packs in data/ that no index named, deleted. */
  unreferencedPacksDeleted: number;
  /** New packs written by repacking. */
  packsWritten: number;
  /** Blob copies no longer stored (unused blobs and surplus duplicates). */
  blobsRemoved: number;
  /** Used blobs copied into new packs. */
  blobsRepacked: number;
  /** Bytes of deleted packs minus bytes of new packs. */
  bytesFreed: number;
  /** Bytes of unused blobs left in packs kept as they are. */
  unusedBytesKept: number;
  /** Every pack id that is gone from the vault (deleted, rewritten, unreferenced). */
  removedPacks: string[];
  /**
   * Blobs no longer stored anywhere in the vault (every copy was unused): a dedup mirror must
   * forget them, or a later backup would skip uploading them.
   */
  removedBlobs: { type: BlobType; id: string }[];
  /** The new packs and their blobs: the new locations of every repacked blob. */
  newPacks: IndexPack[];
  /** Packs an index named but whose file was missing; they held no used blob and are now out of the index. */
  missingPacksDropped: string[];
  /** Index files replaced (deleted), and the ones written. */
  supersededIndexes: string[];
  newIndexes: string[];
}

interface PackInfo {
  id: string;
  entries: PackEntry[];
  /** Size on the backend; undefined when the file is missing. */
  size: number | undefined;
  /** Usable as a source: present with the size its index entries imply. */
  sound: boolean;
}

const key = (type: BlobType, id: string) => `${type}:${id}`;
const blobBytes = (entries: PackEntry[]) => entries.reduce((a, e) => a + e.length, 0);

export function pruneVault(repo: VaultRepository, options: PruneOptions = {}): Promise<PruneResult> {
  const maxUnused = options.maxUnusedFraction ?? 0.1;
  if (!(maxUnused >= 0 && maxUnused <= 1)) throw new RangeError('maxUnusedFraction must be from 0 to 1');
  const target = options.targetPackSize ?? 16 * 1024 * 1024;
  const dryRun = options.dryRun ?? false;
  return withLock(
    repo,
    {
      exclusive: !dryRun,
      ...(options.lock && { lock: options.lock }),
      ...(options.lockRecheckDelayMs !== undefined && { recheckDelayMs: options.lockRecheckDelayMs }),
    },
    () => prune(repo, maxUnused, target, dryRun),
  );
}

async function prune(
  repo: VaultRepository,
  maxUnused: number,
  targetPackSize: number,
  dryRun: boolean,
): Promise<PruneResult> {
  // 1. snapshots first, then the index (restic's reader order)
  const snapshots = await repo.listSnapshots();
  const indexFiles: string[] = [];
  for await (const { path } of repo.backend.list('index')) indexFiles.push(path.slice('index/'.length));
  const index = await repo.loadIndex();
  const onDisk = new Map<string, number>();
  for await (const { path, size } of repo.backend.list('data'))
    onDisk.set(path.slice(path.lastIndexOf('/') + 1), size);

  const packs: PackInfo[] = [...index.packs].map(([id, entries]) => {
    const size = onDisk.get(id);
    return { id, entries, size, sound: size !== undefined && size === expectedPackSize(entries) };
  });
  const unreferenced = [...onDisk.keys()].filter((id) => !index.packs.has(id));

  // 2. what the snapshots use
  const used = await usedBlobs(repo, index, snapshots);

  // 3. one owning copy per used blob
  const naiveUsed = new Map<string, number>();
  const copies = new Map<string, PackInfo[]>();
  for (const p of packs) {
    if (!p.sound) continue;
    let bytes = 0;
    for (const e of p.entries) {
      const k = key(e.type, e.id);
      if (!used.has(k)) continue;
      bytes += e.length;
      const c = copies.get(k);
      if (c) c.push(p);
      else copies.set(k, [p]);
    }
    naiveUsed.set(p.id, bytes);
  }
  const missing = [...used].filter((k) => !copies.has(k));
  if (missing.length > 0) {
    throw new VaultError(
      `prune stopped: ${missing.length} blob(s) the snapshots need are only in missing or damaged packs ` +
        `(e.g. ${missing.slice(0, 3).join(', ')}); nothing was changed. Run a vault check.`,
    );
  }
  // prefer the copy in the pack with the highest used share (e.g. a pack an interrupted prune
  // already wrote), then the most used bytes, then the lower id
  const share = (p: PackInfo) => naiveUsed.get(p.id)! / Math.max(1, blobBytes(p.entries));
  const better = (p: PackInfo, q: PackInfo) =>
    share(p) !== share(q)
      ? share(p) > share(q)
      : naiveUsed.get(p.id)! !== naiveUsed.get(q.id)!
        ? naiveUsed.get(p.id)! > naiveUsed.get(q.id)!
        : p.id < q.id;
  const owner = new Map<string, string>();
  for (const [k, c] of copies) {
    let best = c[0]!;
    for (const p of c.slice(1)) if (better(p, best)) best = p;
    owner.set(k, best.id);
  }

  const result: PruneResult = {
    dryRun,
    snapshots: snapshots.length,
    packsBefore: onDisk.size,
    bytesBefore: [...onDisk.values()].reduce((a, b) => a + b, 0),
    packsDeleted: 0,
    packsRewritten: 0,
    unreferencedPacksDeleted: 0,
    packsWritten: 0,
    blobsRemoved: 0,
    blobsRepacked: 0,
    bytesFreed: 0,
    unusedBytesKept: 0,
    removedPacks: [],
    removedBlobs: [],
    newPacks: [],
    missingPacksDropped: [],
    supersededIndexes: [],
    newIndexes: [],
  };

  const keep: IndexPack[] = [];
  const repack: { pack: PackInfo; entries: PackEntry[] }[] = [];
  const remove: string[] = [];
  for (const p of packs) {
    if (p.size === undefined) {
      result.missingPacksDropped.push(p.id);
      continue;
    }
    const owned = p.sound ? p.entries.filter((e) => owner.get(key(e.type, e.id)) === p.id) : [];
    const total = blobBytes(p.entries);
    const usedBytes = blobBytes(owned);
    if (owned.length === 0) {
      remove.push(p.id);
      result.packsDeleted++;
      result.blobsRemoved += p.entries.length;
    } else if (total > 0 && (total - usedBytes) / total > maxUnused) {
      repack.push({ pack: p, entries: owned });
      remove.push(p.id);
      result.packsRewritten++;
      result.blobsRemoved += p.entries.length - owned.length;
      result.blobsRepacked += owned.length;
    } else {
      keep.push({ id: p.id, blobs: p.entries });
      result.unusedBytesKept += total - usedBytes;
    }
  }
  const survivors = new Set<string>();
  for (const p of keep) for (const e of p.blobs) survivors.add(key(e.type, e.id));
  for (const r of repack) for (const e of r.entries) survivors.add(key(e.type, e.id));
  const gone = new Set<string>();
  for (const p of packs) {
    for (const e of p.entries) {
      const k = key(e.type, e.id);
      if (survivors.has(k) || gone.has(k)) continue;
      gone.add(k);
      result.removedBlobs.push({ type: e.type, id: e.id });
    }
  }
  const indexChanges = remove.length > 0 || result.missingPacksDropped.length > 0;
  const freedBefore =
    remove.reduce((a, id) => a + onDisk.get(id)!, 0) + unreferenced.reduce((a, id) => a + onDisk.get(id)!, 0);
  result.unreferencedPacksDeleted = unreferenced.length;
  result.removedPacks = [...remove, ...unreferenced];

  if (dryRun) {
    // estimate: the repacked blobs' bytes come back (plus a header per pack)
    const repackBytes = repack.reduce((a, r) => a + r.entries.reduce((b, e) => b + e.length, 0), 0);
    result.bytesFreed = freedBefore - repackBytes;
    if (indexChanges) result.supersededIndexes = indexFiles;
    return result;
  }

  // 4. new packs
  let written = 0;
  const pending: Record<BlobType, { blobs: PackBlobInput[]; bytes: number }> = {
    data: { blobs: [], bytes: 0 },
    tree: { blobs: [], bytes: 0 },
  };
  const flush = async (type: BlobType) => {
    const batch = pending[type];
    if (batch.blobs.length === 0) return;
    const w = await repo.writePack(batch.blobs);
    result.newPacks.push({ id: w.packId, blobs: w.entries });
    written += w.size;
    pending[type] = { blobs: [], bytes: 0 };
  };
  const copied = new Set<string>();
  for (const { pack, entries } of repack) {
    const bytes = await repo.backend.load(packPath(pack.id));
    for (const e of entries) {
      const k = key(e.type, e.id);
      if (copied.has(k)) continue;
      copied.add(k);
      const payload = decrypt(
        repo.key,
        bytes.subarray(e.offset, e.offset + e.length),
        `blob ${e.id} in pack ${pack.id}`,
      );
      // buildPack checks each blob against its id (decompressing compressed ones) before packing
      pending[e.type].blobs.push(
        e.uncompressedLength === undefined
          ? { type: e.type, id: e.id, plaintext: payload }
          : { type: e.type, id: e.id, zstd: payload, uncompressedLength: e.uncompressedLength },
      );
      pending[e.type].bytes += e.length;
      if (pending[e.type].bytes >= targetPackSize) await flush(e.type);
    }
  }
  await flush('data');
  await flush('tree');
  result.packsWritten = result.newPacks.length;
  result.bytesFreed = freedBefore - written;

  // 5. the new index, then 6. deletions
  if (indexChanges) {
    result.newIndexes = await repo.saveIndex([...keep, ...result.newPacks], { supersedes: indexFiles });
    result.supersededIndexes = indexFiles;
    const fresh = new Set(result.newIndexes);
    for (const id of indexFiles) if (!fresh.has(id)) await repo.backend.remove(`index/${id}`);
  }
  for (const id of result.removedPacks) await repo.backend.remove(packPath(id));
  await repo.loadIndex(); // drop the cached locations of deleted packs
  return result;
}

/**
 * The blobs (as `type:id`) every snapshot reaches. Throws when a tree cannot be found or read:
 * pruning on a partial picture could delete data a snapshot needs.
 */
export async function usedBlobs(
  repo: VaultRepository,
  index: VaultIndex,
  snapshots: { id: string; snapshot: { tree: string } }[],
): Promise<Set<string>> {
  const used = new Set<string>();
  const missingData: string[] = [];
  const stack: { tree: string; snapshot: string }[] = snapshots.map((s) => ({
    tree: s.snapshot.tree,
    snapshot: s.id,
  }));
  while (stack.length > 0) {
    const { tree, snapshot } = stack.pop()!;
    const k = key('tree', tree);
    if (used.has(k)) continue;
    const loc = index.get('tree', tree);
    if (!loc)
      throw new VaultError(
        `prune stopped: tree ${tree} (snapshot ${snapshot.slice(0, 12)}) is in no index; run a vault check`,
      );
    let nodes: ReturnType<typeof decodeTree>;
    try {
      nodes = decodeTree(await repo.readBlob('tree', tree), `tree ${tree}`);
    } catch (err) {
      throw new VaultError(
        `prune stopped: tree ${tree} (snapshot ${snapshot.slice(0, 12)}) cannot be read: ${(err as Error).message}`,
        { cause: err },
      );
    }
    used.add(k);
    for (const node of nodes) {
      if (node.type === 'file') {
        for (const id of node.content ?? []) {
          used.add(key('data', id));
          if (!index.has('data', id)) missingData.push(id);
        }
      } else if (node.type === 'dir' && node.subtree) {
        stack.push({ tree: node.subtree, snapshot });
      }
    }
  }
  if (missingData.length > 0) {
    throw new VaultError(
      `prune stopped: ${missingData.length} data blob(s) the snapshots need are in no index ` +
        `(e.g. ${missingData.slice(0, 3).join(', ')}); run a vault check`,
    );
  }
  return used;
}
