import zstdBinding from 'zstd-napi/binding.js';
import { ProtocolError } from './errors.ts';
import { BlockEncoding, type BlockEncodingValue } from './messages.ts';
import { MAX_BLOCK_SIZE } from './version.ts';

const { findFrameCompressedSize, getFrameContentSize } = zstdBinding;

/**
 * Block encoding, shared by agent and server. A block is compressed once, on the agent, and
 * then travels and rests in that form (wire, chunk store, restore), so the server never
 * spends CPU recompressing.
 */

/** zstd level 1: on the bench data 37% less CPU than level 3 for 2.5% more bytes. */
export const ZSTD_LEVEL = 1;

/** Keep the compressed form only when it saves at least this fraction. */
const MIN_SAVING = 1 / 32;

export interface EncodedBlock {
  enc: BlockEncodingValue;
  data: Buffer;
}

/** One block, into a buffer of its own (BlockEncoder is the way for a stream of blocks). */
export function encodeBlock(raw: Buffer, level = ZSTD_LEVEL): EncodedBlock {
  oneOff ??= new BlockEncoder();
  const out = Buffer.allocUnsafe(BlockEncoder.bound(raw.length));
  const n = oneOff.encodeInto(out, raw, level);
  return n > 0
    ? { enc: BlockEncoding.zstd, data: out.subarray(0, n) }
    : { enc: BlockEncoding.raw, data: raw };
}

/**
 * encodeBlock for a thread that encodes block after block (the agent's hashing workers): one
 * zstd context, and the output goes where the caller says, so encoding allocates nothing per
 * block (a new output buffer per block was garbage for that thread's collector and allocator).
 */
export class BlockEncoder {
  private readonly cctx = new zstdBinding.CCtx();

  /** Room encodeInto may need for a block of this size. */
  static bound(rawLength: number): number {
    return zstdBinding.compressBound(rawLength);
  }

  /**
   * Compresses `raw` into `out` (at least bound(raw.length) long). Returns the compressed
   * length, or 0 when the block should travel as it is (compression did not save enough).
   */
  encodeInto(out: Uint8Array, raw: Uint8Array, level = ZSTD_LEVEL): number {
    const n = this.cctx.compress(out, raw, level);
    return n <= raw.length * (1 - MIN_SAVING) ? n : 0;
  }
}

let oneOff: BlockEncoder | undefined;

/**
 * Decodes blocks received from a peer (a restoring agent, the server's verification workers). A
 * zstd block must be exactly one frame that declares its size, and that size must be a legal
 * block size: a small frame must not be able to make the receiver allocate gigabytes
 * (decompression bomb). One zstd context and one output buffer, kept and reused, so decoding
 * allocates nothing per block (a new buffer per block was garbage for the thread's collector):
 * what decode returns is valid until its next call.
 */
export class BlockDecoder {
  private readonly dctx = new zstdBinding.DCtx();
  private out: Buffer | undefined;

  decode(enc: number, data: Uint8Array, maxSize = MAX_BLOCK_SIZE): Buffer {
    if (enc === BlockEncoding.raw) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    if (enc !== BlockEncoding.zstd)
      throw new ProtocolError('PROTO_ERR_INVALID_MESSAGE', `unknown block encoding ${enc}`);
    let size: number | null;
    try {
      if (findFrameCompressedSize(data) !== data.length) throw new Error('trailing bytes after the frame');
      size = getFrameContentSize(data);
    } catch (err) {
      throw new ProtocolError(
        'PROTO_ERR_MALFORMED',
        `block is not one zstd frame: ${(err as Error).message}`,
      );
    }
    if (size === null || size > maxSize) {
      throw new ProtocolError(
        'PROTO_ERR_MALFORMED',
        `zstd block must declare a size of at most ${maxSize} bytes`,
      );
    }
    // Grown to the largest block seen (at most maxSize), never shrunk.
    if (!this.out || this.out.length < size) this.out = Buffer.allocUnsafeSlow(Math.max(size, 1 << 20));
    let n: number;
    try {
      n = this.dctx.decompress(this.out.subarray(0, size), data);
    } catch (err) {
      throw new ProtocolError(
        'PROTO_ERR_MALFORMED',
        `zstd block does not decompress: ${(err as Error).message}`,
      );
    }
    if (n !== size)
      throw new ProtocolError('PROTO_ERR_MALFORMED', `zstd block declares ${size} bytes but holds ${n}`);
    return this.out.subarray(0, n);
  }
}
