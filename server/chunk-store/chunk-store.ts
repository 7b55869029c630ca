/*
 * The chunk store: the server's content-addressed disk store of blocks (tier 1).
 *
 * A block is named by the SHA-256 of its raw content. Blocks are appended to pack files
 * (pack-writer.ts) in the encoding the agent sent them (raw or zstd: compression happens
 * once, on the agent), and the chunk index (table `chunks`) maps each hash to its pack,
 * offset and sizes. A block is part of the store exactly when it has an index row; index rows
 * are inserted only after the pack bytes they point to were fsynced, so the index never
 * points at bytes a crash could lose. Bytes with no index row (a backup that died before its
 * flush, a duplicate written by two concurrent backups) are dead space that garbage
 * collection reclaims by rewriting packs.
 *
 * Trust: the store keeps one copy of each block whoever sent it; who may *use* a block is
 * decided by `agent_chunks` (server/backup), never by knowing its hash.
 */
import { type FileHandle, mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { decompress } from 'zstd-napi';
import { blockHash } from '../../protocol/hash.ts';
import { BlockEncoding } from '../../protocol/messages.ts';
import { ChunkStoreError } from './errors.ts';
import { type ChunkLocation, packPath, PackWriter } from './pack-writer.ts';

export { ChunkStoreError } from './errors.ts';
export type { ChunkLocation } from './pack-writer.ts';

/** Open pack files kept for reads (restores read many blocks from few packs). */
const MAX_OPEN_PACKS = 64;

/** Garbage collection grace when none is configured (the server's `--gc-grace` default). */
export const DEFAULT_GC_GRACE_MS = 60 * 60_000;

export interface ChunkStoreOptions {
  /**
   * Garbage collection never sweeps a block touched within this time (server/gc/gc.ts). Backups
   * refresh the touch time of a block they reuse once it is older than half of this
   * (server/chunk-store/chunk-touch.ts); a collection never uses a shorter grace than that.
   */
  gcGraceMs?: number;
}

export class ChunkStore {
  private readonly open = new Map<string, Promise<FileHandle>>();
  /** Packs of pack writers not yet closed: garbage collection leaves them alone. */
  private readonly writing = new Set<string>();

  private constructor(
    readonly packsDir: string,
    /** Packs replaced by a rewrite wait here until the next garbage collection (server/gc). */
    readonly trashDir: string,
    readonly gcGraceMs: number,
  ) {}

  /** `dir` is the store folder; packs live in dir/packs, rewritten packs wait in dir/trash. */
  static async open(dir: string, opts: ChunkStoreOptions = {}): Promise<ChunkStore> {
    const packsDir = path.join(dir, 'packs');
    const trashDir = path.join(dir, 'trash');
    await mkdir(packsDir, { recursive: true });
    await mkdir(trashDir, { recursive: true });
    return new ChunkStore(packsDir, trashDir, opts.gcGraceMs ?? DEFAULT_GC_GRACE_MS);
  }

  newWriter(): PackWriter {
    return new PackWriter(this.packsDir, this.writing);
  }

  pathOf(pack: string): string {
    return packPath(this.packsDir, pack);
  }

  /** Where a rewritten pack waits until the next garbage collection empties the trash. */
  trashPathOf(pack: string): string {
    return path.join(this.trashDir, path.basename(packPath(this.packsDir, pack)));
  }

  /** A pack writer still holds this pack: it may grow, or gain index rows at its next flush. */
  isWriting(pack: string): boolean {
    return this.writing.has(pack);
  }

  /** Closes a cached read handle of a pack that is being deleted (after reads already on it). */
  forget(pack: string): void {
    const fh = this.open.get(pack);
    if (!fh) return;
    this.open.delete(pack);
    void fh.then((h) => h.close()).catch(() => {});
  }

  /** The block's bytes as stored (possibly zstd), for sending on without recompressing. */
  async readStored(loc: ChunkLocation): Promise<Buffer> {
    const fh = await this.handle(loc.pack);
    const buf = Buffer.allocUnsafe(loc.storedSize);
    let got: number;
    try {
      ({ bytesRead: got } = await fh.read(buf, 0, loc.storedSize, loc.offset));
    } catch (err) {
      throw new ChunkStoreError(
        'STORE_IO',
        `cannot read block ${loc.hash} from pack ${loc.pack}: ${(err as Error).message}`,
      );
    }
    if (got !== loc.storedSize) {
      throw new ChunkStoreError(
        'CHUNK_MISSING',
        `pack ${loc.pack} is shorter than the index says (block ${loc.hash})`,
      );
    }
    return buf;
  }

  /** The raw block, decoded and checked against its name. */
  async readVerified(loc: ChunkLocation): Promise<Buffer> {
    return this.checkStored(loc, await this.readStored(loc));
  }

  /** Decodes bytes read as stored and checks them against the block's name; returns the raw block. */
  checkStored(loc: ChunkLocation, stored: Buffer): Buffer {
    let raw: Buffer;
    try {
      raw = loc.encoding === BlockEncoding.zstd ? decompress(stored) : stored;
    } catch (err) {
      throw new ChunkStoreError(
        'CHUNK_CORRUPT',
        `block ${loc.hash} in pack ${loc.pack} does not decode: ${(err as Error).message}`,
      );
    }
    if (raw.length !== loc.size || blockHash(raw).toString('hex') !== loc.hash) {
      throw new ChunkStoreError(
        'CHUNK_CORRUPT',
        `block ${loc.hash} in pack ${loc.pack} does not match its hash`,
      );
    }
    return raw;
  }

  async close(): Promise<void> {
    const handles = [...this.open.values()];
    this.open.clear();
    await Promise.all(handles.map((p) => p.then((fh) => fh.close()).catch(() => {})));
  }

  private handle(pack: string): Promise<FileHandle> {
    let fh = this.open.get(pack);
    if (fh) {
      // Refresh LRU position.
      this.open.delete(pack);
      this.open.set(pack, fh);
      return fh;
    }
    const file = this.pathOf(pack);
    // A pack that garbage collection just rewrote is in the trash until the next collection:
    // a reader that looked up the old location a moment before still finds its block there.
    fh = open(file, 'r')
      .catch((err: NodeJS.ErrnoException) =>
        err.code === 'ENOENT'
          ? open(this.trashPathOf(pack), 'r').catch(() => Promise.reject(err))
          : Promise.reject(err),
      )
      .catch((err: NodeJS.ErrnoException) => {
        this.open.delete(pack);
        throw new ChunkStoreError(
          err.code === 'ENOENT' ? 'CHUNK_MISSING' : 'STORE_IO',
          `cannot open pack ${pack} in ${this.packsDir}: ${err.message}`,
        );
      });
    this.open.set(pack, fh);
    if (this.open.size > MAX_OPEN_PACKS) {
      const [oldest, old] = this.open.entries().next().value!;
      this.open.delete(oldest);
      void old.then((h) => h.close()).catch(() => {});
    }
    return fh;
  }
}
