import zstdBinding from 'zstd-napi/binding.js';
import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { decodeBlock } from '../../protocol/block-codec.ts';
import type { ProtocolError } from '../../protocol/errors.ts';
import { blockHash } from '../../protocol/hash.ts';
import { BlockEncoding } from '../../protocol/messages.ts';
import { MAX_BLOCK_SIZE } from '../../protocol/version.ts';

/*
 * Pool worker (pure: buffers in, verdicts out): decodes each received block and checks it
 * hashes to the name it was sent under. The server stores the block as received, so the
 * decoded bytes are only used for the check: a well-formed zstd block is decompressed into a
 * buffer this thread keeps, not into a new one per block (those pile up as garbage, tens of MiB
 * per thread, before the collector runs). Anything else goes through decodeBlock, whose rules
 * (one frame, declared size at most MAX_BLOCK_SIZE) and errors are the protocol's. A batch
 * arrives as one moved buffer.
 */

export interface VerifyTask {
  blocks: PackedBlocks;
  /** 32 bytes per block: the names they were sent under. */
  hashes: Uint8Array;
  encodings: number[];
}

export type VerifyResult =
  | { ok: true; size: number }
  | { ok: false; code: ProtocolError['code']; message: string };

let dctx: InstanceType<typeof zstdBinding.DCtx> | undefined;
let scratch: Buffer | undefined;

/** A zstd block decompressed into the kept buffer (valid until the next call), or undefined to take decodeBlock's path. */
function decompressKept(data: Uint8Array): Buffer | undefined {
  try {
    if (zstdBinding.findFrameCompressedSize(data) !== data.length) return undefined;
    const size = zstdBinding.getFrameContentSize(data);
    if (size === null || size > MAX_BLOCK_SIZE) return undefined;
    scratch ??= Buffer.allocUnsafeSlow(MAX_BLOCK_SIZE);
    dctx ??= new zstdBinding.DCtx();
    const n = dctx.decompress(scratch.subarray(0, size), data);
    return n === size ? scratch.subarray(0, n) : undefined;
  } catch {
    return undefined;
  }
}

export default function verifyBlocks(task: VerifyTask): VerifyResult[] {
  return unpackBlocks(task.blocks).map((data, i): VerifyResult => {
    const enc = task.encodings[i]!;
    let raw = enc === BlockEncoding.zstd ? decompressKept(data) : undefined;
    if (raw === undefined) {
      try {
        raw = decodeBlock(enc, data);
      } catch (err) {
        const e = err as ProtocolError;
        return { ok: false, code: e.code ?? 'PROTO_ERR_MALFORMED', message: e.message };
      }
    }
    if (!blockHash(raw).equals(task.hashes.subarray(32 * i, 32 * i + 32))) {
      return {
        ok: false,
        code: 'PROTO_ERR_HASH_MISMATCH',
        message: 'block content does not match its hash; nothing was stored',
      };
    }
    return { ok: true, size: raw.length };
  });
}
