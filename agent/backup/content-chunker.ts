import { createHash } from 'node:crypto';

/**
 * Content-defined chunking for files (FastCDC: a gear rolling hash with normalised chunking).
 *
 * A file's blocks end where its content says, not at fixed offsets, so bytes inserted or removed
 * early in a file shift only the block they fall in, and a range copied to another offset (in the
 * same file or another one) yields the same blocks and is stored once, on the server and in the
 * vault. Disk images keep fixed blocks: their writes stay in place and must map to one block.
 *
 * The gear table and the masks are part of the storage format in all but name: changing them does
 * not make any backup wrong, but blocks cut before and after no longer deduplicate.
 */
export const CHUNKING_SCHEME = 'fastcdc-gear32-v1';

/** 256 pseudo-random 32-bit words, derived from a fixed label so every agent cuts alike. */
const GEAR = (() => {
  const table = new Int32Array(256);
  for (let i = 0; i < 256; i += 8) {
    const words = createHash('sha256')
      .update(`holdfast gear table ${i / 8}`)
      .digest();
    for (let j = 0; j < 8; j++) table[i + j] = words.readInt32LE(4 * j);
  }
  return table;
})();

export interface ChunkBounds {
  min: number;
  /** The size chunks cluster around. */
  avg: number;
  max: number;
}

/**
 * Bounds for a datasource's block size: chunks of half to four times it (never above `maxBlock`),
 * clustering around it. A file no larger than `min` is one block.
 */
export function chunkBounds(blockSize: number, maxBlock: number): ChunkBounds {
  const max = Math.min(blockSize * 4, maxBlock);
  const avg = Math.min(blockSize, max);
  return { min: Math.max(1, Math.floor(avg / 2)), avg, max };
}

/** Blocks per file the block size is scaled to stay under (a file entry lists every hash). */
export const MAX_BLOCKS_PER_FILE = 128 * 1024;

/**
 * The block size a file of `fileSize` bytes is cut around: the datasource's, doubled as often as
 * needed to keep the file under MAX_BLOCKS_PER_FILE blocks (32 GiB at 256 KiB), up to
 * `maxBlock`. Powers of two, so a file that grows past a step is re-cut once, not on every size.
 */
export function fileBlockSize(blockSize: number, fileSize: number, maxBlock: number): number {
  let size = blockSize;
  while (size < maxBlock && fileSize / size > MAX_BLOCKS_PER_FILE) size *= 2;
  return Math.min(size, maxBlock);
}

/**
 * Names how a datasource's blocks are cut, for the checksum cache: hashes cut one way are no
 * use to a backup that cuts another (a changed block size, say).
 */
export function blockLayout(kind: 'files' | 'image', blockSize: number, maxBlock: number): string {
  if (kind === 'image') return `fixed:${blockSize}`;
  const { min, avg, max } = chunkBounds(blockSize, maxBlock);
  return `${CHUNKING_SCHEME}:${min}/${avg}/${max}:x2/${MAX_BLOCKS_PER_FILE}`;
}

/**
 * Finds where the chunk starting at `buf[start]` ends, looking at most at `end - start` bytes
 * (the caller offers `max` bytes unless the file ends sooner). Returns the chunk's length.
 */
export class ContentChunker {
  /** Below `avg`, a cut needs two more zero bits (rarer); past it, two fewer (likelier). */
  private readonly maskSmall: number;
  private readonly maskLarge: number;

  constructor(readonly bounds: ChunkBounds) {
    const bits = Math.round(Math.log2(bounds.avg - bounds.min));
    // The high bits of the hash depend on the last 32 bytes, the low ones on fewer: use the top.
    this.maskSmall = topBits(bits + 2);
    this.maskLarge = topBits(bits - 2);
  }

  cut(buf: Uint8Array, start: number, end: number): number {
    const { min, avg, max } = this.bounds;
    const length = Math.min(end - start, max);
    if (length <= min) return length;
    const normal = start + Math.min(avg, length);
    const stop = start + length;
    const maskSmall = this.maskSmall;
    const maskLarge = this.maskLarge;
    let h = 0;
    let i = start + min;
    for (; i < normal; i++) {
      h = ((h << 1) + GEAR[buf[i]!]!) | 0;
      if ((h & maskSmall) === 0) return i + 1 - start;
    }
    for (; i < stop; i++) {
      h = ((h << 1) + GEAR[buf[i]!]!) | 0;
      if ((h & maskLarge) === 0) return i + 1 - start;
    }
    return length;
  }
}

function topBits(n: number): number {
  const bits = Math.max(1, Math.min(31, n));
  return (0xffffffff << (32 - bits)) | 0;
}
