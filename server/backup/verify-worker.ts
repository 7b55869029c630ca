import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { BlockDecoder } from '../../protocol/block-codec.ts';
import type { ProtocolError } from '../../protocol/errors.ts';
import { blockHash } from '../../protocol/hash.ts';

/*
 * Pool worker (pure: buffers in, verdicts out): decodes each received block and checks it
 * hashes to the name it was sent under. The server stores the block as received, so the
 * decoded bytes are only used for the check: a zstd block is decompressed into a buffer this
 * thread keeps (BlockDecoder), not into a new one per block (those pile up as garbage, tens of
 * MiB per thread, before the collector runs). A batch arrives as one moved buffer.
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

const decoder = new BlockDecoder();

export default function verifyBlocks(task: VerifyTask): VerifyResult[] {
  return unpackBlocks(task.blocks).map((data, i): VerifyResult => {
    let raw: Buffer;
    try {
      raw = decoder.decode(task.encodings[i]!, data);
    } catch (err) {
      const e = err as ProtocolError;
      return { ok: false, code: e.code ?? 'PROTO_ERR_MALFORMED', message: e.message };
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
