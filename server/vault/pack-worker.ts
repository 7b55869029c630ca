import { Piscina } from 'piscina';
import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { type MasterKeyJson, masterKeyFromJson } from './format/crypto.ts';
import { type BlobType, buildPack, type PackBlobInput, type PackEntry } from './format/pack.ts';

/*
 * Pool worker of the online-backup pipeline (pure: blocks in, one pack out). Blocks the chunk
 * store holds as zstd go into the pack with their compression as it is (checked to decompress
 * to their id); raw ones are compressed here where that helps. Everything is encrypted with the
 * vault's master key. The blocks arrive as one moved buffer; the pack goes back moved too.
 */

export interface PackTask {
  key: MasterKeyJson;
  type: BlobType;
  blocks: PackedBlocks;
  /** Per block: its id, and the uncompressed length when the block is a zstd frame. */
  meta: { id: string; zstdLength?: number }[];
}

export interface PackTaskResult {
  id: string;
  bytes: ArrayBuffer;
  entries: PackEntry[];
}

export default function buildPackTask(task: PackTask): PackTaskResult {
  const key = masterKeyFromJson(task.key);
  const blobs: PackBlobInput[] = unpackBlocks(task.blocks).map((data, i) => {
    const m = task.meta[i]!;
    return m.zstdLength !== undefined
      ? { type: task.type, id: m.id, zstd: data, uncompressedLength: m.zstdLength }
      : { type: task.type, id: m.id, plaintext: data };
  });
  const pack = buildPack(key, blobs, { compression: true });
  // A fresh ArrayBuffer of exactly the pack (Buffer.concat may share a pool slab).
  const bytes = new ArrayBuffer(pack.bytes.length);
  new Uint8Array(bytes).set(pack.bytes);
  const result: PackTaskResult = { id: pack.id, bytes, entries: pack.entries };
  return Piscina.move({
    [Piscina.transferableSymbol]: [bytes],
    [Piscina.valueSymbol]: result,
  } as never) as unknown as PackTaskResult;
}
