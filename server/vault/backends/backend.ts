/**
 * The storage under a vault. A vault is a restic repository (docs/vault-format.md); a backend
 * only moves opaque bytes by path and knows nothing of encryption, packs or indexes. The
 * local folder, Azure Blob Storage and S3 backends all implement exactly this interface.
 *
 * Paths are restic's repository layout, '/'-separated, relative to the repository root:
 *
 *   config                       the encrypted repository config
 *   keys/<64 hex>                key files (JSON, not encrypted as a whole)
 *   locks/<64 hex>               lock files
 *   snapshots/<64 hex>           snapshot files
 *   index/<64 hex>               index files
 *   data/<first 2 hex>/<64 hex>  pack files
 *
 * Contract every backend keeps:
 * - save(path, data) is atomic: a reader (another Holdfast process, restic) sees either no
 *   file or the complete one, never a partial one. Saving an existing path replaces it; since
 *   every name but `config` is the SHA-256 of its content, a replacement carries the same bytes.
 * - load(path) returns the whole file; load(path, {offset, length}) returns exactly `length`
 *   bytes starting at `offset`, or rejects if the file is shorter. A missing path rejects with
 *   VaultNotFoundError (below), so callers can tell "absent" from "unreachable".
 * - stat(path) resolves to undefined for a missing path.
 * - list(prefix) yields every file under that top-level folder with its full path and size,
 *   in no particular order; for 'data' that includes all 256 subfolders. Files whose names
 *   are not 64 hex characters (a backend's own temp files) are not listed.
 * - remove(path) deletes the file; removing a missing path is not an error (a retried
 *   delete must succeed).
 * Errors other than "not found" (network, permissions, throttling) are thrown as they come;
 * retrying is the backend's own business.
 */

export type VaultFolder = 'data' | 'index' | 'snapshots' | 'keys' | 'locks';

export interface VaultBackend {
  /** For messages and logs, e.g. 'local:/var/lib/holdfast/vault' or 'azure:container/prefix'. */
  name: string;
  save(path: string, data: Buffer): Promise<void>;
  load(path: string, range?: { offset: number; length: number }): Promise<Buffer>;
  stat(path: string): Promise<{ size: number } | undefined>;
  list(prefix: VaultFolder): AsyncIterable<{ path: string; size: number }>;
  remove(path: string): Promise<void>;
}

/** What load() rejects with when the path does not exist. Test with `instanceof` or `code`. */
export class VaultNotFoundError extends Error {
  readonly code = 'VAULT_NOT_FOUND';
  constructor(readonly path: string) {
    super(`vault file ${path} does not exist`);
    this.name = 'VaultNotFoundError';
  }
}

const HEX64 = '[0-9a-f]{64}';
const VALID_PATH = new RegExp(`^(config|(keys|locks|snapshots|index)/${HEX64}|data/[0-9a-f]{2}/${HEX64})$`);

/**
 * Whether a path is one of the layout's names. Backends check every path with this so a bug
 * upstream cannot write or delete outside the repository (no '..', no absolute paths).
 */
export function isValidVaultPath(path: string): boolean {
  if (!VALID_PATH.test(path)) return false;
  // a pack lives in the subfolder named by its first two hex digits
  if (path.startsWith('data/')) return path.slice(5, 7) === path.slice(8, 10);
  return true;
}

export function assertValidVaultPath(path: string): void {
  if (!isValidVaultPath(path)) throw new Error(`not a vault path: ${JSON.stringify(path)}`);
}

/** The path of a pack file: data/<first two hex digits>/<id>. */
export function packPath(id: string): string {
  return `data/${id.slice(0, 2)}/${id}`;
}
