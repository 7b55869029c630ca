import { closeSync, openSync, readSync } from 'node:fs';
import { ChunkStoreError } from './chunk-store.ts';

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

/** Reads the blocks as stored, into one buffer; returns a view per block, in order. */
export function readStoredBlocksSync(refs: StoredBlockRef[]): Buffer[] {
  const total = refs.reduce((n, r) => n + r.storedSize, 0);
  const all = Buffer.allocUnsafe(total);
  const fds = new Map<string, number>();
  const out: Buffer[] = [];
  try {
    let at = 0;
    for (const ref of refs) {
      let fd = fds.get(ref.file);
      if (fd === undefined) {
        fd = openPack(ref);
        fds.set(ref.file, fd);
      }
      const view = all.subarray(at, at + ref.storedSize);
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
      out.push(view);
      at += ref.storedSize;
    }
  } finally {
    for (const fd of fds.values()) closeSync(fd);
  }
  return out;
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
