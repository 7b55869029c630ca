import { closeSync, openSync, readSync } from 'node:fs';
import { ChunkStoreError } from './errors.ts';

/*
 * Synchronous block reads for worker threads (the vault's pack pool reads the blocks it packs
 * itself, so the main thread neither reads nor copies them). Same rules as ChunkStore's reads:
 * a pack garbage collection just rewrote is still found in the trash.
 */

/** Where one stored block is, with the pack's path resolved by the ChunkStore (pathOf/trashPathOf). */
export interface StoredBlockRef {
  hash: string;
  file: string;
  trashFile: string;
  offset: number;
  storedSize: number;
}

/**
 * Reads stored blocks one at a time into one buffer it keeps (grown to the largest block), so
 * a thread that reads block after block allocates nothing per block. Store packs stay open
 * until closeFiles().
 */
export class StoredBlockReader {
  private readonly fds = new Map<string, number>();
  private buffer: Buffer | undefined;

  /** The block as stored: a view valid until the next read. */
  read(ref: StoredBlockRef): Buffer {
    let fd = this.fds.get(ref.file);
    if (fd === undefined) {
      fd = openPack(ref);
      this.fds.set(ref.file, fd);
    }
    if (!this.buffer || this.buffer.length < ref.storedSize) {
      this.buffer = undefined;
      this.buffer = Buffer.allocUnsafeSlow(ref.storedSize);
    }
    const view = this.buffer.subarray(0, ref.storedSize);
    let got = 0;
    try {
      while (got < ref.storedSize) {
        const n = readSync(fd, view, got, ref.storedSize - got, ref.offset + got);
        if (n === 0) break;
        got += n;
      }
    } catch (err) {
      throw new ChunkStoreError(
        'STORE_IO',
        `cannot read block ${ref.hash} from ${ref.file}: ${(err as Error).message}`,
      );
    }
    if (got !== ref.storedSize) {
      throw new ChunkStoreError(
        'CHUNK_MISSING',
        `${ref.file} is shorter than the index says (block ${ref.hash})`,
      );
    }
    return view;
  }

  closeFiles(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}

function openPack(ref: StoredBlockRef): number {
  try {
    return openSync(ref.file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      try {
        return openSync(ref.trashFile, 'r');
      } catch {
        // fall through to the error about the pack's own path
      }
    }
    const code = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'CHUNK_MISSING' : 'STORE_IO';
    throw new ChunkStoreError(code, `cannot open ${ref.file}: ${(err as Error).message}`);
  }
}
