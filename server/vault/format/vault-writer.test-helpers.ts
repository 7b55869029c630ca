import { sha256Hex } from './id.ts';
import type { IndexPack } from './index-file.ts';
import type { PackBlobInput } from './pack.ts';
import { wrapInPath } from './path-trees.ts';
import type { VaultRepository } from './repository.ts';
import { holdfastTags, newSnapshot } from './snapshot.ts';
import { dirNode, encodeTree, fileNode, symlinkNode, type TreeNode } from './tree.ts';

/**
 * A miniature of the online-backup pipeline for tests: turns an in-memory folder description
 * into blocks (1 MiB, as Holdfast cuts them), data packs, tree packs, an index file and a
 * snapshot, storing only blobs the vault does not hold yet. Deliberately written only against
 * the format's public API, the way the real pipeline will use it.
 */

export const BLOCK_SIZE = 1024 * 1024;

export interface Meta {
  mode?: number;
  mtimeMs?: number;
  uid?: number;
  gid?: number;
}
export type SpecNode =
  | ({ type: 'file'; content: Buffer } & Meta)
  | ({ type: 'symlink'; target: string } & Meta)
  | ({ type: 'dir'; children: Record<string, SpecNode> } & Meta);

export const DEFAULT_MTIME_MS = Date.UTC(2024, 4, 1, 10, 30, 15) + 0.123456;

export function blocksOf(content: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off < content.length; off += BLOCK_SIZE)
    out.push(content.subarray(off, off + BLOCK_SIZE));
  return out;
}

export class TestVaultWriter {
  private readonly dataBlobs = new Map<string, Buffer>();
  private readonly treeBlobs = new Map<string, Buffer>();
  /** Data blobs written per writeSnapshot call: lets tests check deduplication. */
  lastNewDataBlobs = 0;

  constructor(private readonly repo: VaultRepository) {}

  private async known(type: 'data' | 'tree', id: string): Promise<boolean> {
    const index = await this.repo.loadIndex();
    return index.has(type, id);
  }

  private addData(block: Buffer): string {
    const id = sha256Hex(block);
    this.dataBlobs.set(id, block);
    return id;
  }

  private node(name: string, spec: SpecNode): TreeNode {
    const meta = {
      name,
      mode: spec.mode ?? (spec.type === 'dir' ? 0o755 : spec.type === 'symlink' ? 0o777 : 0o644),
      mtime: spec.mtimeMs ?? DEFAULT_MTIME_MS,
      uid: spec.uid ?? 0,
      gid: spec.gid ?? 0,
    };
    if (spec.type === 'file') {
      const content = blocksOf(spec.content).map((b) => this.addData(b));
      return fileNode({ ...meta, size: spec.content.length, content });
    }
    if (spec.type === 'symlink') return symlinkNode({ ...meta, target: spec.target });
    const tree = encodeTree(Object.entries(spec.children).map(([n, child]) => this.node(n, child)));
    this.treeBlobs.set(tree.id, tree.bytes);
    return dirNode({ ...meta, subtree: tree.id });
  }

  /** Stores `top` (a folder or an image file) as a snapshot of `absPath`; returns the snapshot id. */
  async writeSnapshot(input: {
    absPath: string;
    top: SpecNode;
    hostname: string;
    datasourceId: string;
    group: string;
    recoveryPointId: string;
    timeMs: number;
  }): Promise<string> {
    this.dataBlobs.clear();
    this.treeBlobs.clear();
    const top = this.node('top', input.top);
    const { rootTreeId, trees } = wrapInPath(input.absPath, top, { mtime: input.timeMs });
    for (const t of trees) this.treeBlobs.set(t.id, t.bytes);

    const packs: IndexPack[] = [];
    const newData: PackBlobInput[] = [];
    for (const [id, plaintext] of this.dataBlobs)
      if (!(await this.known('data', id))) newData.push({ type: 'data', id, plaintext });
    const newTrees: PackBlobInput[] = [];
    for (const [id, plaintext] of this.treeBlobs)
      if (!(await this.known('tree', id))) newTrees.push({ type: 'tree', id, plaintext });
    this.lastNewDataBlobs = newData.length;
    // packs first, then the index naming them, then the snapshot (restic's write order)
    for (const batch of [newData, newTrees]) {
      if (batch.length === 0) continue;
      const written = await this.repo.writePack(batch);
      packs.push({ id: written.packId, blobs: written.entries });
    }
    if (packs.length > 0) await this.repo.saveIndex(packs);
    return this.repo.saveSnapshot(
      newSnapshot({
        time: input.timeMs,
        tree: rootTreeId,
        paths: [input.absPath],
        hostname: input.hostname,
        tags: holdfastTags({
          datasourceId: input.datasourceId,
          group: input.group,
          recoveryPointId: input.recoveryPointId,
        }),
      }),
    );
  }
}
