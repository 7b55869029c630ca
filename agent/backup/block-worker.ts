import { Piscina } from 'piscina';
import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { BlockEncoder } from '../../protocol/block-codec.ts';
import { blockHash } from '../../protocol/hash.ts';
import type { BlockEncodingValue } from '../../protocol/messages.ts';

/*
 * Pool worker (pure: buffers in, buffers out): hashes a batch of blocks, recognises zero
 * blocks, and compresses the others when asked. A batch arrives as one moved buffer and its
 * results leave the same way, so the per-block cost of crossing threads is close to nothing.
 */

export interface BlockTask {
  /** Each block owns its whole ArrayBuffer, moved here and moved back with the results. */
  blocks: Uint8Array[];
  compress: boolean;
  /** Recognise all-zero blocks (fixed-size image blocks); file chunks are stored like any other. */
  zeroBlocks: boolean;
  /**
   * 32 bytes per block: the hash it had in the base recovery point (zeros: none). A block whose
   * hash is still that is not sent, so it is not compressed.
   */
  previous?: Uint8Array;
}

export interface BlockResult {
  hash: Buffer;
  /** All-zero block (only when the task asked): neither sent nor stored. */
  zero: boolean;
  enc: BlockEncodingValue;
  /** The compressed bytes when enc is zstd; null means "send the block as read". */
  encoded: Buffer | null;
}

/** Results as moved back: hashes, per-block flags (1 = zero, 2 = zstd), compressed payloads, the blocks. */
export interface BlockTaskResult {
  hashes: ArrayBuffer;
  flags: Uint8Array;
  encoded: PackedBlocks;
  blocks: Uint8Array[];
}

const ZEROS = Buffer.alloc(4 * 1024 * 1024);
/** The hash of an all-zero block, by length (an image has one or two lengths). */
const zeroHashes = new Map<number, Buffer>();
function zeroHash(length: number): Buffer {
  let hash = zeroHashes.get(length);
  if (!hash) {
    hash = blockHash(ZEROS.subarray(0, length));
    zeroHashes.set(length, hash);
  }
  return hash;
}
const encoder = new BlockEncoder();
/** Compressed blocks of the task at hand, back to back (kept and grown, never shrunk). */
let scratch = Buffer.alloc(0);

/** The work itself, on whichever thread calls it (a pool thread, or the reader's when the pool is behind). */
export function processBlocks(task: BlockTask): BlockTaskResult {
  const blocks = task.blocks.map((b) => Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  const hashes = Buffer.allocUnsafeSlow(32 * blocks.length);
  const flags = new Uint8Array(blocks.length);
  const lengths: number[] = [];
  let room = 0;
  if (task.compress) for (const b of blocks) room += BlockEncoder.bound(b.length);
  if (scratch.length < room) {
    scratch = Buffer.alloc(0);
    scratch = Buffer.allocUnsafeSlow(room);
  }
  let at = 0;
  const previous =
    task.previous && Buffer.from(task.previous.buffer, task.previous.byteOffset, task.previous.byteLength);
  blocks.forEach((buf, i) => {
    // Zero blocks first: comparing runs at memory speed and stops at the first non-zero byte,
    // hashing does not (a third of the bench's disk image is zeros).
    if (task.zeroBlocks && buf.equals(ZEROS.subarray(0, buf.length))) {
      hashes.set(zeroHash(buf.length), 32 * i);
      flags[i] = 1;
      return;
    }
    const hash = blockHash(buf);
    hashes.set(hash, 32 * i);
    if (!task.compress || previous?.subarray(32 * i, 32 * i + 32).equals(hash)) return;
    // Each block compresses right after the last one kept; one not worth it is overwritten.
    const n = encoder.encodeInto(scratch.subarray(at), buf);
    if (n === 0) return;
    flags[i] = 2;
    lengths.push(n);
    at += n;
  });
  // One copy out, of exactly what was kept: the buffer moves to the main thread.
  const packedOut: PackedBlocks = { buffer: new ArrayBuffer(at), lengths };
  new Uint8Array(packedOut.buffer).set(scratch.subarray(0, at));
  return { hashes: hashes.buffer, flags, encoded: packedOut, blocks: task.blocks };
}

/** Pool entry: the results and the blocks move back to the main thread, nothing is copied. */
export default function processBlocksInPool(task: BlockTask) {
  const result = processBlocks(task);
  return Piscina.move({
    [Piscina.transferableSymbol]: [result.hashes, result.encoded.buffer, ...task.blocks.map((b) => b.buffer)],
    [Piscina.valueSymbol]: result,
  } as never);
}

/** Main-thread side: the results of one task, block by block, with each block as read. */
export function readBlockResults(result: BlockTaskResult): (BlockResult & { block: Buffer })[] {
  const hashes = Buffer.from(result.hashes);
  const encoded = unpackBlocks(result.encoded);
  let next = 0;
  return [...result.flags].map((flag, i) => {
    const b = result.blocks[i]!;
    return {
      hash: hashes.subarray(32 * i, 32 * i + 32),
      zero: flag === 1,
      enc: flag === 2 ? 1 : 0,
      encoded: flag === 2 ? encoded[next++]! : null,
      block: Buffer.from(b.buffer, b.byteOffset, b.byteLength),
    };
  });
}
