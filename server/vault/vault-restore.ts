import path from 'node:path';
import type { Entry } from '../../protocol/entry.ts';
import type { Db } from '../db/database.ts';
import { posixPermissions } from './format/file-mode.ts';
import { sha256Hex } from './format/id.ts';
import { decodeBlob, readBlobFromPack } from './format/pack.ts';
import { pathComponents } from './format/path-trees.ts';
import type { VaultRepository } from './format/repository.ts';
import { decodeTree, type TreeNode } from './format/tree.ts';
import { type BlobRow, locateBlobs } from './vault-mirror.ts';
import { packPath } from './backends/backend.ts';
import type { BlobType } from './format/pack.ts';

/*
 * A vault recovery point read back as the restore session reads a disk one: its entries (from
 * the snapshot's trees, below the datasource path) in manifest form, and its blocks by hash,
 * located through the mirror (pack, offset, length), read with ranged reads, decrypted and
 * checked against their id. Zero blocks come back as null hashes: the agent leaves holes.
 */

const ENTRY_BATCH = 1000;

export class VaultPointReader {
  private readonly zeroIds = new Map<number, string>();

  constructor(
    private readonly db: Db,
    private readonly repo: VaultRepository,
    private readonly point: { snapshotId: string; path: string; kind: 'files' | 'image'; blockSize: number },
  ) {}

  /** A blob by id, through the mirror; falls back to the vault's own index. */
  async readBlob(type: BlobType, id: string): Promise<Buffer> {
    const loc = (await locateBlobs(this.db, type, [id])).get(id);
    if (!loc) return this.repo.readBlob(type, id);
    return this.readLocated(loc);
  }

  async readLocated(loc: BlobRow): Promise<Buffer> {
    return readBlobFromPack(this.repo.backend, this.repo.key, loc.packId, {
      id: loc.id,
      offset: loc.offset,
      length: loc.length,
      ...(loc.uncompressedLength !== null && { uncompressedLength: loc.uncompressedLength }),
    });
  }

  /** Raw stored bytes of a blob (for decoding elsewhere, e.g. a worker). */
  async readStored(loc: BlobRow): Promise<Buffer> {
    return this.repo.backend.load(packPath(loc.packId), { offset: loc.offset, length: loc.length });
  }

  decode(loc: BlobRow, stored: Buffer): Buffer {
    return decodeBlob(this.repo.key, stored, {
      id: loc.id,
      ...(loc.uncompressedLength !== null && { uncompressedLength: loc.uncompressedLength }),
    });
  }

  locate(ids: string[]): Promise<Map<string, BlobRow>> {
    return locateBlobs(this.db, 'data', ids);
  }

  async loadTree(id: string): Promise<TreeNode[]> {
    return decodeTree(await this.readBlob('tree', id), `tree ${id}`);
  }

  /** The node of the datasource itself (its folder, or the image file). */
  async topNode(): Promise<TreeNode> {
    const snapshot = await this.repo.loadSnapshot(this.point.snapshotId);
    let nodes = await this.loadTree(snapshot.tree);
    const parts = pathComponents(this.point.path);
    if (parts.length === 0)
      return { name: '/', type: 'dir', uid: 0, gid: 0, content: null, subtree: snapshot.tree };
    for (let i = 0; i < parts.length; i++) {
      const node = nodes.find((n) => n.name === parts[i]);
      if (!node) throw new Error(`snapshot ${this.point.snapshotId} has no ${this.point.path}`);
      if (i === parts.length - 1) return node;
      if (node.type !== 'dir' || !node.subtree)
        throw new Error(
          `snapshot ${this.point.snapshotId}: ${parts.slice(0, i + 1).join('/')} is not a folder`,
        );
      nodes = await this.loadTree(node.subtree);
    }
    throw new Error('unreachable');
  }

  async *entries(): AsyncGenerator<Entry[]> {
    const top = await this.topNode();
    let batch: Entry[] = [];
    if (top.type === 'file') {
      yield [this.toEntry(top, path.posix.basename(this.point.path) || top.name)!];
      return;
    }
    if (top.type !== 'dir' || !top.subtree)
      throw new Error(`${this.point.path} in the vault is not a folder`);
    for await (const e of this.walk(top.subtree, '')) {
      batch.push(e);
      if (batch.length >= ENTRY_BATCH) {
        yield batch;
        batch = [];
      }
    }
    if (batch.length > 0) yield batch;
  }

  private async *walk(treeId: string, prefix: string): AsyncGenerator<Entry> {
    for (const node of await this.loadTree(treeId)) {
      const p = prefix ? `${prefix}/${node.name}` : node.name;
      const entry = this.toEntry(node, p);
      if (!entry) continue;
      yield entry;
      if (node.type === 'dir' && node.subtree) yield* this.walk(node.subtree, p);
    }
  }

  private toEntry(node: TreeNode, p: string): Entry | undefined {
    const common = {
      path: p,
      mode: posixPermissions(node.mode ?? 0),
      uid: node.uid,
      gid: node.gid,
      mtimeMs: node.mtime ? Date.parse(node.mtime) || 0 : 0,
    };
    if (node.type === 'dir') return { type: 'dir', ...common };
    if (node.type === 'symlink') return { type: 'symlink', ...common, target: node.linktarget ?? '' };
    if (node.type !== 'file') return undefined;
    const size = node.size ?? 0;
    const bs = this.point.blockSize;
    const hashes = (node.content ?? []).map((id, i) => {
      const len = Math.min(bs, size - i * bs);
      if (len > 0 && id === this.zeroId(len)) return null;
      return Buffer.from(id, 'hex');
    });
    return { type: 'file', ...common, size, hashes };
  }

  private zeroId(len: number): string {
    let id = this.zeroIds.get(len);
    if (!id) {
      id = sha256Hex(Buffer.alloc(len));
      this.zeroIds.set(len, id);
    }
    return id;
  }
}
