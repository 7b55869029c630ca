import { randomBytes } from 'node:crypto';
import { type FileHandle, mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir, isDiskFull } from '../../lib/durable-fs.ts';
import { hashHex } from '../../protocol/hash.ts';
import { PACK_MAGIC, PACK_TARGET_BYTES, recordHeader, RECORD_HEADER_BYTES } from './pack-format.ts';

/** Where a block lives: what the chunk index records for it. */
export interface BlockToAppend {
  hash: Uint8Array;
  encoding: number;
  payload: Uint8Array;
  /** Raw block length. */
  size: number;
}

export interface ChunkLocation {
  hash: string;
  pack: string;
  offset: number;
  size: number;
  storedSize: number;
  encoding: number;
}

/**
 * Appends blocks of one writer (one backup) to pack files of ~64 MiB, so a million small
 * blocks are a few dozen files rather than a million. Appends are cheap (no fsync);
 * `flush()` makes everything appended so far durable and returns its locations, which the
 * caller then records in the chunk index. Nothing refers to a block before its flush.
 */
export class PackWriter {
  private current: { id: string; fh: FileHandle; size: number } | undefined;
  /** Packs written since the last flush. */
  private readonly unsynced = new Set<FileHandle>();
  private readonly newDirs = new Set<string>();
  private pendingLocations: ChunkLocation[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;

  /** Every pack this writer created. */
  private readonly created: string[] = [];

  /**
   * `active` (the store's) holds the ids of packs whose writer is not closed yet, so garbage
   * collection never touches a pack that may still grow or gain index rows.
   */
  constructor(
    private readonly packsDir: string,
    private readonly active?: Set<string>,
  ) {}

  /** Appends one block; resolves once it is written (not yet durable). Appends keep call order. */
  async append(
    hash: Uint8Array,
    encoding: number,
    payload: Uint8Array,
    size: number,
  ): Promise<ChunkLocation> {
    const [location] = await this.appendMany([{ hash, encoding, payload, size }]);
    return location!;
  }

  /**
   * Appends blocks with one vectored write per pack they land in (a batch of small blocks is
   * one system call, not one per block); resolves once they are written (not yet durable).
   */
  appendMany(blocks: BlockToAppend[]): Promise<ChunkLocation[]> {
    const run = this.chain.then(() => this.write(blocks));
    this.chain = run.catch(() => {});
    return run;
  }

  /** fsync every pack written since the last flush; returns the blocks that became durable. */
  flush(): Promise<ChunkLocation[]> {
    const run = this.chain.then(async () => {
      if (this.closed) return [];
      const files = [...this.unsynced];
      this.unsynced.clear();
      await Promise.all(files.map((fh) => fh.sync()));
      for (const fh of files) if (fh !== this.current?.fh) await fh.close();
      for (const dir of this.newDirs) await fsyncDir(dir);
      this.newDirs.clear();
      const done = this.pendingLocations;
      this.pendingLocations = [];
      return done;
    });
    this.chain = run.catch(() => {});
    return run;
  }

  /** Closes the open pack; blocks appended after the last flush are abandoned (never indexed). */
  async close(): Promise<void> {
    this.closed = true;
    this.pendingLocations = [];
    await this.chain;
    const fhs = new Set([...this.unsynced, ...(this.current ? [this.current.fh] : [])]);
    this.unsynced.clear();
    this.current = undefined;
    await Promise.all([...fhs].map((fh) => fh.close().catch(() => {})));
    for (const id of this.created) this.active?.delete(id);
  }

  private async write(blocks: BlockToAppend[]): Promise<ChunkLocation[]> {
    if (this.closed) throw new Error('pack writer is closed');
    const locations: ChunkLocation[] = [];
    let next = 0;
    while (next < blocks.length) {
      const pack = await this.packForAppend();
      const parts: Uint8Array[] = [];
      const start = pack.size;
      let size = pack.size;
      // Fill this pack up to its target; the block that crosses it still goes in.
      while (next < blocks.length && size < PACK_TARGET_BYTES) {
        const b = blocks[next++]!;
        parts.push(recordHeader(b.hash, b.encoding, b.size, b.payload.length), b.payload);
        locations.push({
          hash: hashHex(b.hash),
          pack: pack.id,
          offset: size + RECORD_HEADER_BYTES,
          size: b.size,
          storedSize: b.payload.length,
          encoding: b.encoding,
        });
        size += RECORD_HEADER_BYTES + b.payload.length;
      }
      try {
        const { bytesWritten } = await pack.fh.writev(parts, start);
        // A short write is a full disk that did not say so (ENOSPC comes on the next call).
        if (bytesWritten !== size - start) throw Object.assign(new Error('short write'), { code: 'ENOSPC' });
      } catch (err) {
        if (isDiskFull(err))
          throw new Error(`chunk store ${this.packsDir} is full (disk full) while writing pack ${pack.id}`);
        throw new Error(`cannot write pack ${pack.id} in ${this.packsDir}: ${(err as Error).message}`);
      }
      pack.size = size;
      this.unsynced.add(pack.fh);
      if (pack.size >= PACK_TARGET_BYTES) this.current = undefined; // next append opens a new pack
    }
    this.pendingLocations.push(...locations);
    return locations;
  }

  private async packForAppend(): Promise<{ id: string; fh: FileHandle; size: number }> {
    if (this.current) return this.current;
    const id = randomBytes(16).toString('hex');
    this.created.push(id);
    this.active?.add(id);
    const file = packPath(this.packsDir, id);
    const dir = path.dirname(file);
    // A new prefix folder is itself a new name in packs/: sync that too at the next flush.
    if (await mkdir(dir, { recursive: true })) this.newDirs.add(this.packsDir);
    const fh = await open(file, 'wx', 0o600);
    await fh.write(PACK_MAGIC, 0, PACK_MAGIC.length, 0);
    this.current = { id, fh, size: PACK_MAGIC.length };
    this.unsynced.add(fh);
    this.newDirs.add(dir);
    return this.current;
  }
}

/** packs/<first two hex digits>/<id>.pack: 256 folders keep directories small at any size. */
export function packPath(packsDir: string, id: string): string {
  if (!/^[0-9a-f]{32}$/.test(id)) throw new Error(`invalid pack id "${id}"`);
  return path.join(packsDir, id.slice(0, 2), `${id}.pack`);
}
