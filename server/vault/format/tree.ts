import { VaultFormatError } from './errors.ts';
import { goFileMode, type NodeType } from './file-mode.ts';
import { goQuoteName, goUnquoteName } from './go-quote.ts';
import { formatGoTime, type TimeInput } from './go-time.ts';
import { isId, sha256Hex } from './id.ts';

/**
 * Tree blobs (doc/design.rst, "Trees and Data"; restic's internal/restic/node.go, tree.go):
 * one directory's listing as JSON {"nodes": [...]}, stored as a tree blob whose id is the
 * SHA-256 of the JSON bytes. A file node lists its data blob ids in order (`content`), a
 * directory node names its own tree blob (`subtree`), a symlink carries `linktarget`.
 *
 * Fields, their order and their omission rules follow restic's Node struct, so restic
 * restores our trees exactly as its own: `mode` is a Go os.FileMode (file-mode.ts), times are
 * RFC 3339 with nanoseconds (go-time.ts), names are Go-quoted (go-quote.ts), `content` is
 * [] for an empty file (restic's check rejects null there) and null for everything else.
 * Nodes are sorted by name, bytewise, as restic keeps them.
 *
 * Numbers above 2^53 (inode, device ids restic may write) lose precision when read; Holdfast
 * only reads them, never writes them back.
 */

export interface TreeNode {
  /** The real name (unescaped); encodeTree quotes it as restic does. */
  name: string;
  type: NodeType;
  /** Go os.FileMode: see goFileMode(). */
  mode?: number;
  mtime?: string;
  atime?: string;
  ctime?: string;
  uid: number;
  gid: number;
  user?: string;
  group?: string;
  inode?: number;
  device_id?: number;
  size?: number;
  links?: number;
  linktarget?: string;
  extended_attributes?: { name: string; value: string }[];
  device?: number;
  /** Data blob ids, in order. [] for an empty file; null for anything but a file. */
  content: string[] | null;
  /** Tree blob id of a directory's listing. */
  subtree?: string;
  error?: string;
}

export interface EncodedTree {
  /** SHA-256 of `bytes`: the tree blob's id. */
  id: string;
  bytes: Buffer;
}

/** Go's zero time.Time, which restic writes for a missing timestamp. */
const GO_ZERO_TIME = '0001-01-01T00:00:00Z';

export interface NodeMeta {
  name: string;
  /** POSIX mode or permission bits (only the low 12 bits are used). */
  mode: number;
  mtime: TimeInput;
  /** Defaults to mtime. */
  atime?: TimeInput;
  /** Defaults to mtime. */
  ctime?: TimeInput;
  uid: number;
  gid: number;
  user?: string;
  group?: string;
}

export function fileNode(meta: NodeMeta & { size: number; content: string[] }): TreeNode {
  return { ...baseNode(meta, 'file'), size: meta.size, content: [...meta.content] };
}

export function dirNode(meta: NodeMeta & { subtree: string }): TreeNode {
  return { ...baseNode(meta, 'dir'), content: null, subtree: meta.subtree };
}

export function symlinkNode(meta: NodeMeta & { target: string }): TreeNode {
  return { ...baseNode(meta, 'symlink'), linktarget: meta.target, content: null };
}

function baseNode(meta: NodeMeta, type: NodeType): Omit<TreeNode, 'content'> {
  const mtime = formatGoTime(meta.mtime);
  return {
    name: meta.name,
    type,
    mode: goFileMode(type, meta.mode),
    mtime,
    atime: meta.atime === undefined ? mtime : formatGoTime(meta.atime),
    ctime: meta.ctime === undefined ? mtime : formatGoTime(meta.ctime),
    uid: meta.uid,
    gid: meta.gid,
    ...(meta.user && { user: meta.user }),
    ...(meta.group && { group: meta.group }),
  };
}

/** Serialises a directory listing into a tree blob. Sorts the nodes; rejects what restic would. */
export function encodeTree(nodes: TreeNode[]): EncodedTree {
  const sorted = [...nodes].sort((a, b) =>
    Buffer.compare(Buffer.from(a.name, 'utf8'), Buffer.from(b.name, 'utf8')),
  );
  for (let i = 0; i < sorted.length; i++) {
    validateNode(sorted[i]!);
    if (i > 0 && sorted[i]!.name === sorted[i - 1]!.name) {
      throw new VaultFormatError(`tree has two nodes named ${JSON.stringify(sorted[i]!.name)}`);
    }
  }
  // restic's SaveTree: json.Marshal(tree) + '\n'
  const bytes = Buffer.from(`${JSON.stringify({ nodes: sorted.map(nodeToJson) })}\n`, 'utf8');
  return { id: sha256Hex(bytes), bytes };
}

function validateNode(n: TreeNode): void {
  const what = `node ${JSON.stringify(n.name)}`;
  if (n.name === '' || n.name === '.' || n.name === '..' || n.name.includes('/')) {
    throw new VaultFormatError(`invalid node name ${JSON.stringify(n.name)}`);
  }
  if (n.type === 'file') {
    if (!Array.isArray(n.content))
      throw new VaultFormatError(`${what}: a file needs a content list ([] when empty)`);
    for (const id of n.content)
      if (!isId(id)) throw new VaultFormatError(`${what}: content id ${JSON.stringify(id)} is not 64 hex`);
    if (!Number.isSafeInteger(n.size ?? 0) || (n.size ?? 0) < 0)
      throw new VaultFormatError(`${what}: invalid size`);
  } else if (n.content !== null && n.content !== undefined && n.content.length > 0) {
    throw new VaultFormatError(`${what}: only files have content`);
  }
  if (n.type === 'dir' && !isId(n.subtree))
    throw new VaultFormatError(`${what}: a directory needs a subtree id`);
  if (n.type !== 'dir' && n.subtree !== undefined)
    throw new VaultFormatError(`${what}: only directories have a subtree`);
  if (n.type === 'symlink' && typeof n.linktarget !== 'string')
    throw new VaultFormatError(`${what}: a symlink needs a target`);
}

/** restic's Node JSON: its field order, its omitempty rules. */
function nodeToJson(n: TreeNode): Record<string, unknown> {
  const out: Record<string, unknown> = { name: goQuoteName(n.name), type: n.type };
  if (n.mode) out.mode = n.mode;
  out.mtime = n.mtime ?? GO_ZERO_TIME;
  out.atime = n.atime ?? GO_ZERO_TIME;
  out.ctime = n.ctime ?? GO_ZERO_TIME;
  out.uid = n.uid;
  out.gid = n.gid;
  if (n.user) out.user = n.user;
  if (n.group) out.group = n.group;
  if (n.inode) out.inode = n.inode;
  if (n.device_id) out.device_id = n.device_id;
  if (n.size) out.size = n.size;
  if (n.links) out.links = n.links;
  if (n.linktarget) out.linktarget = n.linktarget;
  if (n.extended_attributes && n.extended_attributes.length > 0)
    out.extended_attributes = n.extended_attributes;
  if (n.device) out.device = n.device;
  out.content = n.type === 'file' ? (n.content ?? []) : null;
  if (n.subtree) out.subtree = n.subtree;
  if (n.error) out.error = n.error;
  return out;
}

/** Parses a tree blob's plaintext (ours or restic's). */
export function decodeTree(bytes: Buffer, what = 'tree'): TreeNode[] {
  let value: { nodes?: unknown };
  try {
    value = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new VaultFormatError(`${what} is not JSON`, { cause: err });
  }
  if (value === null || typeof value !== 'object') throw new VaultFormatError(`${what} is not a tree`);
  // Go writes a nil slice as null: an empty directory
  if (value.nodes === null || value.nodes === undefined) return [];
  if (!Array.isArray(value.nodes)) throw new VaultFormatError(`${what}: nodes is not a list`);
  return value.nodes.map((raw: Record<string, unknown>) => {
    if (typeof raw?.name !== 'string' || typeof raw.type !== 'string') {
      throw new VaultFormatError(`${what}: node without name or type`);
    }
    const node = { ...raw } as unknown as TreeNode & { linktarget_raw?: string };
    node.name = goUnquoteName(raw.name);
    node.uid = typeof raw.uid === 'number' ? raw.uid : 0;
    node.gid = typeof raw.gid === 'number' ? raw.gid : 0;
    node.content = Array.isArray(raw.content) ? (raw.content as string[]) : null;
    if (node.linktarget_raw !== undefined) {
      // restic stores a target that is not valid UTF-8 as base64 bytes
      node.linktarget = Buffer.from(node.linktarget_raw, 'base64').toString('utf8');
      delete node.linktarget_raw;
    }
    return node;
  });
}
