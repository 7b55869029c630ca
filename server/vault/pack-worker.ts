import { Piscina } from 'piscina';
import { decodeBlock } from '../../protocol/block-codec.ts';
import { BlockEncoding } from '../../protocol/messages.ts';
import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { type MasterKeyJson, masterKeyFromJson } from './format/crypto.ts';
import { type BlobType, buildPack, type PackBlobInput, type PackEntry } from './format/pack.ts';

/*
 * Pool worker of the online-backup pipeline (pure: blocks in, one pack out). Every block is
 * compressed here at the vault's level (zstd 3, as restic's default) where that helps: blocks
 * the chunk store holds as zstd were compressed by the agent at level 1, for speed on the
 * wire; the vault keeps data for years, where size matters more than a few CPU seconds.
 * Each block is checked against its id on the way (buildPack hashes the plaintext).
 * Everything is encrypted with the vault's master key. The blocks arrive as one moved buffer;
 * the pack goes back moved too.
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
    const plaintext = m.zstdLength !== undefined ? decompressBlock(data, m.zstdLength, m.id) : data;
    return { type: task.type, id: m.id, plaintext };
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

function decompressBlock(data: Uint8Array, length: number, id: string): Buffer {
  const plain = decodeBlock(BlockEncoding.zstd, data);
  if (plain.length !== length)
    throw new Error(`block ${id} decompresses to ${plain.length} bytes, not ${length}`);
  return plain;
}
