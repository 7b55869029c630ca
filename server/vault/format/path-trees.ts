import { VaultFormatError } from './errors.ts';
import type { TimeInput } from './go-time.ts';
import { dirNode, type EncodedTree, encodeTree, type TreeNode } from './tree.ts';

/**
 * restic keeps the absolute path of what it backed up in the tree itself: `restic backup
 * /srv/www` makes a root tree holding "srv", whose tree holds "www", whose tree holds the
 * files. `restic restore --target T` then recreates T/srv/www/..., and `restic ls`,
 * `restic find` and `restic dump /srv/www/x` all expect that shape. A Holdfast snapshot wraps
 * its top node (the datasource folder as a dir node, or an image as one file node) the same
 * way.
 */

/** Path components as restic's archiver names them: '/srv/www' -> ['srv', 'www'], 'C:\\x' -> ['C', 'x']. */
export function pathComponents(absPath: string): string[] {
  let p = absPath.replace(/\\/g, '/');
  const drive = /^([A-Za-z]):(\/|$)/.exec(p);
  const parts: string[] = [];
  if (drive) {
    parts.push(drive[1]!);
    p = p.slice(2);
  } else if (!p.startsWith('/')) {
    throw new VaultFormatError(`snapshot path must be absolute: ${JSON.stringify(absPath)}`);
  }
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..')
      throw new VaultFormatError(`snapshot path must not contain "..": ${JSON.stringify(absPath)}`);
    parts.push(seg);
  }
  return parts;
}

export interface ParentDirMeta {
  /** Time given to the folders above the datasource (their real metadata is not known to the server). */
  mtime: TimeInput;
  uid?: number;
  gid?: number;
  /** POSIX permission bits; default 0o755. */
  mode?: number;
}

/**
 * Wraps `top` (renamed to the last component of `absPath`) in one tree per parent folder.
 * Returns the trees to store (deepest first; all must be written as tree blobs) and the root
 * tree id for the snapshot. For absPath '/', `top` must be a directory and its subtree is the
 * root tree itself.
 */
export function wrapInPath(
  absPath: string,
  top: TreeNode,
  parents: ParentDirMeta,
): { rootTreeId: string; trees: EncodedTree[] } {
  const parts = pathComponents(absPath);
  if (parts.length === 0) {
    if (top.type !== 'dir' || !top.subtree)
      throw new VaultFormatError('the root path "/" can only be a directory');
    return { rootTreeId: top.subtree, trees: [] };
  }
  const trees: EncodedTree[] = [];
  let node: TreeNode = { ...top, name: parts[parts.length - 1]! };
  for (let i = parts.length - 2; i >= -1; i--) {
    const tree = encodeTree([node]);
    trees.push(tree);
    if (i < 0) break;
    node = dirNode({
      name: parts[i]!,
      mode: parents.mode ?? 0o755,
      mtime: parents.mtime,
      uid: parents.uid ?? 0,
      gid: parents.gid ?? 0,
      subtree: tree.id,
    });
  }
  return { rootTreeId: trees[trees.length - 1]!.id, trees };
}
