import path from 'node:path';
import type { Entry } from '../../protocol/entry.ts';
import type { TimeInput } from './format/go-time.ts';
import { wrapInPath } from './format/path-trees.ts';
import {
  dirNode,
  type EncodedTree,
  encodeTree,
  fileNode,
  symlinkNode,
  type TreeNode,
} from './format/tree.ts';

/*
 * The trees of a files recovery point's snapshot: one tree per folder of the manifest (a folder
 * named only by the paths under it gets mode 0755, owner 0 and the point's time), the datasource
 * folder's tree as the `top` one, wrapped in one tree per parent of the datasource path
 * (format/path-trees.ts).
 *
 * Agents send entries in walk order (depth first, names bytewise, a folder before what it
 * holds), so a folder is complete as soon as an entry outside it arrives: WalkOrderTrees keeps
 * only the folders open on the way down, and hands each tree out as it is finished, as restic's
 * archiver does. Its trees are byte for byte those of treesOfEntries, which needs the whole
 * manifest in memory and is kept for manifests not in walk order.
 */

type DirEntry = Extract<Entry, { type: 'dir' }>;

interface OpenFolder {
  path: string;
  nodes: TreeNode[];
  entry?: DirEntry;
}

/**
 * Walk order: paths compared component by component, names by their UTF-8 bytes; a path comes
 * before the paths under it. Negative when `a` comes first.
 */
export function compareWalkOrder(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    // '/' ends a component: the shorter name comes first, whatever follows.
    if (x === 0x2f) return -1;
    if (y === 0x2f) return 1;
    // UTF-16 units order as UTF-8 bytes, except surrogates (code points above U+FFFF) that
    // must come after U+E000-U+FFFF.
    if (x >= 0xd800 && y >= 0xd800) {
      x = x >= 0xe000 ? x - 0x800 : x + 0x2000;
      y = y >= 0xe000 ? y - 0x800 : y + 0x2000;
    }
    return x - y;
  }
  return a.length - b.length;
}

/** Builds the folder trees from entries in walk order, handing each finished tree to `emit`. */
export class WalkOrderTrees {
  private readonly open: OpenFolder[] = [{ path: '', nodes: [] }];
  private last: string | undefined;
  private finished = false;

  constructor(
    /** Metadata time of folders that have no entry of their own. */
    private readonly time: TimeInput,
    private readonly emit: (tree: EncodedTree) => void,
  ) {}

  /**
   * Adds the next entry (a file's `content`: its data blob ids). Returns false, adding nothing,
   * when the entry does not come after the previous one in walk order: the trees cannot be
   * built this way then.
   */
  add(e: Entry, content?: string[]): boolean {
    if (this.finished) throw new Error('entries added after finish()');
    if (this.last !== undefined && compareWalkOrder(this.last, e.path) >= 0) return false;
    this.last = e.path;
    const parent = parentOf(e.path);
    while (!holds(this.top.path, parent)) this.close();
    if (parent !== this.top.path) {
      // Folders named only by the paths under them.
      let p = this.top.path;
      for (const seg of parent.slice(p === '' ? 0 : p.length + 1).split('/')) {
        p = p === '' ? seg : `${p}/${seg}`;
        this.open.push({ path: p, nodes: [] });
      }
    }
    const meta = nodeMeta(e);
    if (e.type === 'dir') this.open.push({ path: e.path, nodes: [], entry: e });
    else if (e.type === 'file')
      this.top.nodes.push(fileNode({ ...meta, size: e.size, content: content ?? [] }));
    else this.top.nodes.push(symlinkNode({ ...meta, target: e.target }));
    return true;
  }

  /** Closes every open folder; returns the datasource folder's tree (also emitted). */
  finish(): EncodedTree {
    if (this.finished) throw new Error('finish() called twice');
    while (this.open.length > 1) this.close();
    this.finished = true;
    const tree = encodeTree(this.open.pop()!.nodes);
    this.emit(tree);
    return tree;
  }

  /** Folders open now (the depth of the walk): what this holds besides their listings. */
  get depth(): number {
    return this.open.length;
  }

  private get top(): OpenFolder {
    return this.open[this.open.length - 1]!;
  }

  private close(): void {
    const dir = this.open.pop()!;
    const tree = encodeTree(dir.nodes);
    this.emit(tree);
    this.top.nodes.push(folderNode(dir.path, dir.entry, tree.id, this.time));
  }
}

/**
 * The same trees from the whole manifest, in any order (every tree, deepest first, the
 * datasource folder's last).
 */
export function treesOfEntries(
  entries: Iterable<{ entry: Entry; content?: string[] }>,
  time: TimeInput,
): { folderTree: EncodedTree; trees: EncodedTree[] } {
  const children = new Map<string, TreeNode[]>([['', []]]);
  const dirs = new Map<string, DirEntry>();
  const ensureDir = (p: string) => {
    if (children.has(p)) return;
    children.set(p, []);
    ensureDir(parentOf(p));
  };
  for (const { entry: e, content } of entries) {
    const parent = parentOf(e.path);
    ensureDir(parent);
    const meta = nodeMeta(e);
    if (e.type === 'dir') {
      dirs.set(e.path, e);
      ensureDir(e.path);
    } else if (e.type === 'file') {
      children.get(parent)!.push(fileNode({ ...meta, size: e.size, content: content ?? [] }));
    } else {
      children.get(parent)!.push(symlinkNode({ ...meta, target: e.target }));
    }
  }
  const depth = (p: string) => (p === '' ? 0 : p.split('/').length);
  const order = [...children.keys()].sort((a, b) => depth(b) - depth(a));
  const trees: EncodedTree[] = [];
  for (const dir of order) {
    const tree = encodeTree(children.get(dir)!);
    trees.push(tree);
    if (dir === '') continue;
    children.get(parentOf(dir))!.push(folderNode(dir, dirs.get(dir), tree.id, time));
  }
  return { folderTree: trees[trees.length - 1]!, trees };
}

/** The trees above the datasource folder's (its tree `folderTreeId`), and the snapshot's root. */
export function wrapFolder(
  dsPath: string,
  folderTreeId: string,
  time: TimeInput,
): { rootTreeId: string; trees: EncodedTree[] } {
  const top = dirNode({ name: 'top', mode: 0o755, mtime: time, uid: 0, gid: 0, subtree: folderTreeId });
  return wrapInPath(dsPath, top, { mtime: time });
}

function folderNode(dir: string, d: DirEntry | undefined, subtree: string, time: TimeInput): TreeNode {
  return dirNode({
    name: path.posix.basename(dir),
    mode: d?.mode ?? 0o755,
    mtime: d?.mtimeMs ?? time,
    uid: d?.uid ?? 0,
    gid: d?.gid ?? 0,
    subtree,
  });
}

/** Whether folder `dir` is `p` or holds it. */
function holds(dir: string, p: string): boolean {
  return dir === '' || p === dir || (p.length > dir.length && p.startsWith(dir) && p[dir.length] === '/');
}

function parentOf(p: string): string {
  const i = p.lastIndexOf('/');
  return i < 0 ? '' : p.slice(0, i);
}

/** What every tree node takes from its manifest entry. */
function nodeMeta(e: Entry) {
  return { name: path.posix.basename(e.path), mode: e.mode, mtime: e.mtimeMs, uid: e.uid, gid: e.gid };
}
