import { packPath, type VaultBackend } from '../backends/backend.ts';
import { loadConfig, newConfig, type RepositoryConfig, saveConfig } from './config.ts';
import { type MasterKey, newMasterKey } from './crypto.ts';
import { VaultError, VaultFormatError } from './errors.ts';
import { type IndexPack, indexFromJson, indexToJson, splitForIndexFiles, VaultIndex } from './index-file.ts';
import { addKey, type KdfParams, openRepositoryKey } from './keys.ts';
import { type AcquireLockOptions, acquireLock, type VaultLock } from './locks.ts';
import {
  type BlobType,
  type BuildPackOptions,
  buildPack,
  type PackBlobInput,
  type PackEntry,
  readBlobFromPack,
} from './pack.ts';
import { type Snapshot, snapshotFromJson } from './snapshot.ts';
import { decodeTree, type TreeNode } from './tree.ts';
import { loadJsonFile, saveJsonFile } from './unpacked.ts';

/**
 * A restic repository (format 2) on a backend: the few operations the online-backup pipeline
 * and disaster recovery need, with no database or job logic. Write order is restic's
 * ("Read and Write Ordering" in doc/design.rst): packs first, then the index files naming them,
 * then the snapshot; a crash in between leaves unreferenced files, never a snapshot that
 * points at missing data.
 */

export interface WrittenPack {
  packId: string;
  /** Bytes stored. */
  size: number;
  type: BlobType;
  entries: PackEntry[];
}

export class VaultRepository {
  private index: VaultIndex | undefined;

  private constructor(
    readonly backend: VaultBackend,
    readonly key: MasterKey,
    readonly config: RepositoryConfig,
    /** The key file the passphrase opened (or created). */
    readonly keyId: string,
  ) {}

  /**
   * Creates a new repository: a random master key, a key file for `passphrase` (at least 16
   * characters), then the config (written last, so a crash leaves no half-made repository
   * that looks complete). Refuses if a config already exists.
   */
  static async init(
    backend: VaultBackend,
    passphrase: string,
    options: { kdf?: KdfParams } = {},
  ): Promise<VaultRepository> {
    if (await backend.stat('config'))
      throw new VaultError(`${backend.name} already holds a repository (config exists)`);
    const key = newMasterKey();
    const config = newConfig();
    const keyId = await addKey(backend, passphrase, key, options);
    await saveConfig(backend, key, config);
    return new VaultRepository(backend, key, config, keyId);
  }

  /** Opens an existing repository (ours or restic's) with one of its passphrases. Writes nothing. */
  static async open(backend: VaultBackend, passphrase: string): Promise<VaultRepository> {
    if (!(await backend.stat('config')))
      throw new VaultError(`${backend.name} holds no repository (no config file)`);
    const { key, keyId } = await openRepositoryKey(backend, passphrase);
    const config = await loadConfig(backend, key);
    return new VaultRepository(backend, key, config, keyId);
  }

  /** Adds another passphrase (another key file) for the same master key. */
  addPassphrase(passphrase: string, options: { kdf?: KdfParams } = {}): Promise<string> {
    return addKey(this.backend, passphrase, this.key, options);
  }

  /**
   * Packs blobs of one type (all data or all tree) into one pack and stores it. Blobs are
   * compressed where that helps (format 2). The entries go into an index file with saveIndex
   * before any snapshot refers to them. 16-64 MiB of blobs per pack is the intended size.
   */
  async writePack(blobs: PackBlobInput[], options: BuildPackOptions = {}): Promise<WrittenPack> {
    const pack = buildPack(this.key, blobs, {
      ...options,
      compression: this.config.version >= 2 && (options.compression ?? true),
    });
    await this.backend.save(packPath(pack.id), pack.bytes);
    return { packId: pack.id, size: pack.bytes.length, type: pack.type, entries: pack.entries };
  }

  /** Stores a pack built elsewhere (e.g. by buildPack in a worker thread). */
  async savePack(pack: { id: string; bytes: Buffer }): Promise<void> {
    await this.backend.save(packPath(pack.id), pack.bytes);
  }

  /**
   * Writes index file(s) for packs already stored: one file per 50 000 blobs. Returns their
   * ids. `supersedes` names index files these replace (they are not deleted here).
   */
  async saveIndex(packs: IndexPack[], options: { supersedes?: string[] } = {}): Promise<string[]> {
    const ids: string[] = [];
    for (const group of splitForIndexFiles(packs)) {
      const json = indexToJson({
        packs: group,
        ...(options.supersedes && { supersedes: options.supersedes }),
      });
      ids.push(
        await saveJsonFile(this.backend, this.key, 'index', json, { compress: this.config.version >= 2 }),
      );
    }
    // keep a loaded index current, so readBlob finds what was just written
    this.index?.add({ packs });
    return ids;
  }

  /** Stores a snapshot (last, after its packs and index files). Returns its id. */
  saveSnapshot(snapshot: Snapshot): Promise<string> {
    return saveJsonFile(this.backend, this.key, 'snapshots', snapshot, {
      compress: this.config.version >= 2,
    });
  }

  /** Reads every index file into one blob map, and keeps it for readBlob/loadTree. */
  async loadIndex(): Promise<VaultIndex> {
    const index = new VaultIndex();
    for await (const { path } of this.backend.list('index')) {
      const id = path.slice('index/'.length);
      index.add(indexFromJson(await loadJsonFile(this.backend, this.key, 'index', id), path));
    }
    this.index = index;
    return index;
  }

  async listSnapshots(): Promise<{ id: string; snapshot: Snapshot }[]> {
    const out: { id: string; snapshot: Snapshot }[] = [];
    for await (const { path } of this.backend.list('snapshots')) {
      const id = path.slice('snapshots/'.length);
      out.push({ id, snapshot: await this.loadSnapshot(id) });
    }
    return out.sort((a, b) =>
      a.snapshot.time < b.snapshot.time ? -1 : a.snapshot.time > b.snapshot.time ? 1 : 0,
    );
  }

  async loadSnapshot(id: string): Promise<Snapshot> {
    return snapshotFromJson(await loadJsonFile(this.backend, this.key, 'snapshots', id), `snapshots/${id}`);
  }

  /** Reads a blob by id, verified against its hash. Loads the index on first use. */
  async readBlob(type: BlobType, id: string): Promise<Buffer> {
    const index = this.index ?? (await this.loadIndex());
    const loc = index.get(type, id);
    if (!loc) throw new VaultFormatError(`${type} blob ${id} is not in any index`);
    return readBlobFromPack(this.backend, this.key, loc.packId, loc);
  }

  async loadTree(id: string): Promise<TreeNode[]> {
    return decodeTree(await this.readBlob('tree', id), `tree ${id}`);
  }

  /**
   * Walks a tree depth-first, yielding every node with its '/'-joined path below the tree
   * (directories before their contents).
   */
  async *walk(treeId: string, prefix = ''): AsyncGenerator<{ path: string; node: TreeNode }> {
    for (const node of await this.loadTree(treeId)) {
      const path = prefix ? `${prefix}/${node.name}` : node.name;
      yield { path, node };
      if (node.type === 'dir' && node.subtree) yield* this.walk(node.subtree, path);
    }
  }

  /** Takes a restic-compatible lock; see locks.ts. Writers take shared locks, pruning an exclusive one. */
  lock(options: AcquireLockOptions): Promise<VaultLock> {
    return acquireLock({ backend: this.backend, key: this.key }, options);
  }
}

export const initRepository = VaultRepository.init;
export const openRepository = VaultRepository.open;
