import { VaultFormatError } from './errors.ts';
import { isId } from './id.ts';
import type { BlobType, PackEntry } from './pack.ts';

/**
 * Index files (doc/design.rst, "Indexing"; restic's repository/index JSON): which blobs each
 * pack holds, so a reader finds a blob without reading pack headers.
 *
 *   {"supersedes": [ids]?, "packs": [{"id": pack, "blobs": [{"id", "type": "data"|"tree",
 *     "offset", "length", "uncompressed_length"?}]}]}
 *
 * `uncompressed_length` is present only for compressed blobs. restic's oldest format was a
 * bare array of packs; we read it too. Index files are stored like any unpacked file
 * (unpacked.ts). restic keeps each under 8 MiB; we split at its own limit of 50 000 blobs.
 */

export interface IndexPack {
  id: string;
  blobs: PackEntry[];
}

export interface IndexFileContent {
  packs: IndexPack[];
  supersedes?: string[];
}

/** restic's indexMaxBlobs: an index file is "full" at this many blobs. */
export const MAX_BLOBS_PER_INDEX_FILE = 50_000;

interface BlobJson {
  id: string;
  type: BlobType;
  offset: number;
  length: number;
  uncompressed_length?: number;
}

export function indexToJson(content: IndexFileContent): unknown {
  return {
    ...(content.supersedes && content.supersedes.length > 0 && { supersedes: content.supersedes }),
    packs: content.packs.map((p) => ({
      id: p.id,
      blobs: p.blobs.map(
        (b): BlobJson => ({
          id: b.id,
          type: b.type,
          offset: b.offset,
          length: b.length,
          ...(b.uncompressedLength !== undefined && { uncompressed_length: b.uncompressedLength }),
        }),
      ),
    })),
  };
}

export function indexFromJson(value: unknown, what = 'index'): IndexFileContent {
  const obj = Array.isArray(value)
    ? { packs: value }
    : (value as { packs?: unknown; supersedes?: unknown } | null);
  if (!obj || !Array.isArray(obj.packs)) throw new VaultFormatError(`${what}: no packs list`);
  const packs = obj.packs.map((p: { id?: unknown; blobs?: unknown }): IndexPack => {
    if (!isId(p?.id) || !Array.isArray(p.blobs)) throw new VaultFormatError(`${what}: malformed pack entry`);
    return {
      id: p.id,
      blobs: p.blobs.map((b: Partial<BlobJson>): PackEntry => {
        if (!isId(b?.id) || (b.type !== 'data' && b.type !== 'tree')) {
          throw new VaultFormatError(`${what}: malformed blob entry in pack ${p.id}`);
        }
        if (!isCount(b.offset) || !isCount(b.length))
          throw new VaultFormatError(`${what}: bad offset/length for ${b.id}`);
        const entry: PackEntry = { id: b.id, type: b.type, offset: b.offset, length: b.length };
        // restic writes 0 / omits it for uncompressed blobs
        if (b.uncompressed_length !== undefined && b.uncompressed_length !== 0) {
          if (!isCount(b.uncompressed_length))
            throw new VaultFormatError(`${what}: bad uncompressed_length for ${b.id}`);
          entry.uncompressedLength = b.uncompressed_length;
        }
        return entry;
      }),
    };
  });
  const supersedes = Array.isArray(obj.supersedes) ? obj.supersedes.filter(isId) : undefined;
  return { packs, ...(supersedes && supersedes.length > 0 && { supersedes }) };
}

/** Splits packs into groups of at most MAX_BLOBS_PER_INDEX_FILE blobs (a pack is never split). */
export function splitForIndexFiles(packs: IndexPack[], maxBlobs = MAX_BLOBS_PER_INDEX_FILE): IndexPack[][] {
  const groups: IndexPack[][] = [];
  let current: IndexPack[] = [];
  let count = 0;
  for (const pack of packs) {
    if (current.length > 0 && count + pack.blobs.length > maxBlobs) {
      groups.push(current);
      current = [];
      count = 0;
    }
    current.push(pack);
    count += pack.blobs.length;
  }
  if (current.length > 0) groups.push(current);
  return groups;
}

/** Where a blob is: its pack and its place in it. */
export interface BlobLocation extends PackEntry {
  packId: string;
}

/**
 * All index files merged: blob id -> location, kept per blob type (a tree and a data blob may
 * share a hash). When several packs hold the same blob (allowed; restic's prune cleans it up),
 * the first one seen wins.
 */
export class VaultIndex {
  readonly data = new Map<string, BlobLocation>();
  readonly tree = new Map<string, BlobLocation>();
  /** Every pack named by an index file, with its blobs. */
  readonly packs = new Map<string, PackEntry[]>();

  add(content: IndexFileContent): void {
    for (const pack of content.packs) {
      if (!this.packs.has(pack.id)) this.packs.set(pack.id, pack.blobs);
      for (const blob of pack.blobs) {
        const map = blob.type === 'tree' ? this.tree : this.data;
        if (!map.has(blob.id)) map.set(blob.id, { ...blob, packId: pack.id });
      }
    }
  }

  get(type: BlobType, id: string): BlobLocation | undefined {
    return (type === 'tree' ? this.tree : this.data).get(id);
  }

  has(type: BlobType, id: string): boolean {
    return (type === 'tree' ? this.tree : this.data).has(id);
  }
}

function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}
