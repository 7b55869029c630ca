import { randomBytes } from 'node:crypto';
import { type FileHandle, mkdir, open } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir, isDiskFull } from '../../lib/durable-fs.ts';
import { hashHex } from '../../protocol/hash.ts';
import { PACK_MAGIC, PACK_TARGET_BYTES, recordHeader, RECORD_HEADER_BYTES } from './pack-format.ts';

/** Where a block lives: what the chunk index records for it. */
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
  append(hash: Uint8Array, encoding: number, payload: Uint8Array, size: number): Promise<ChunkLocation> {
    const run = this.chain.then(() => this.write(hash, encoding, payload, size));
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

  private async write(
    hash: Uint8Array,
    encoding: number,
    payload: Uint8Array,
    size: number,
  ): Promise<ChunkLocation> {
    if (this.closed) throw new Error('pack writer is closed');
    const pack = await this.packForAppend();
    const header = recordHeader(hash, encoding, size, payload.length);
    try {
      await pack.fh.writev([header, payload], pack.size);
    } catch (err) {
      if (isDiskFull(err))
        throw new Error(`chunk store ${this.packsDir} is full (disk full) while writing pack ${pack.id}`);
      throw new Error(`cannot write pack ${pack.id} in ${this.packsDir}: ${(err as Error).message}`);
    }
    const location: ChunkLocation = {
      hash: hashHex(hash),
      pack: pack.id,
      offset: pack.size + RECORD_HEADER_BYTES,
      size,
      storedSize: payload.length,
      encoding,
    };
    pack.size += RECORD_HEADER_BYTES + payload.length;
    this.pendingLocations.push(location);
    this.unsynced.add(pack.fh);
    if (pack.size >= PACK_TARGET_BYTES) this.current = undefined; // next append opens a new pack
    return location;
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
