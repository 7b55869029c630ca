import { createCipheriv, createHash } from 'node:crypto';
import { MAX_BLOCK_SIZE } from '../../protocol/version.ts';
import { ContentChunker, chunkBounds, fileBlockSize } from './content-chunker.ts';

/**
 * The blocks the files scanner cuts `data` into (files-scanner.ts), cut in one piece in memory:
 * whole when no larger than the block size, else by content. The scanner, reading through its
 * window, must cut the same; tests use this to know what a change must cost.
 */
export function cutInMemory(data: Buffer, blockSize: number): Buffer[] {
  if (data.length <= blockSize) return data.length === 0 ? [] : [data];
  const size = fileBlockSize(blockSize, data.length, MAX_BLOCK_SIZE);
  return cutByContent(new ContentChunker(chunkBounds(size, MAX_BLOCK_SIZE)), data);
}

/** Every cut of `data` by `chunker`, offering it at most one largest block at a time. */
export function cutByContent(chunker: ContentChunker, data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; ) {
    const len = chunker.cut(data, at, Math.min(data.length, at + chunker.bounds.max));
    out.push(data.subarray(at, at + len));
    at += len;
  }
  return out;
}

/** Deterministic pseudo-random bytes: an AES-CTR keystream keyed by the label. */
export function pseudoRandom(label: string, length: number): Buffer {
  const key = createHash('sha256').update(label).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}
