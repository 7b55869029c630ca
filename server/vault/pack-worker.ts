import { Piscina } from 'piscina';
import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { readStoredBlocksSync, type StoredBlockRef } from '../chunk-store/sync-reader.ts';
import { type MasterKeyJson, masterKeyFromJson } from './format/crypto.ts';
import { buildPack, type PackBlobInput, type PackEntry } from './format/pack.ts';

/*
 * Pool worker of the online-backup pipeline: one pack per task. Data blobs are read here,
 * straight from the chunk store's pack files, so the main thread only schedules, uploads and
 * records. Blocks the chunk store holds as zstd go into the pack with their compression as it is
 * (checked to decompress to their id); raw ones are compressed here where that helps. Tree blobs
 * are built on the main thread and arrive as one moved buffer. Everything is encrypted with the
 * vault's master key; the pack goes back moved, not copied.
 */

/** A data blob to pack: a stored chunk-store block (zstd when zstdLength is set), or zeros. */
export type DataBlobSource =
  | { id: string; zeroLength: number }
  | { id: string; block: StoredBlockRef; zstdLength?: number };

export type PackTask =
  | { key: MasterKeyJson; type: 'data'; sources: DataBlobSource[] }
  | { key: MasterKeyJson; type: 'tree'; blocks: PackedBlocks; ids: string[] };

export interface PackTaskResult {
  id: string;
  bytes: ArrayBuffer;
  entries: PackEntry[];
}

export default function buildPackTask(task: PackTask): PackTaskResult {
  const key = masterKeyFromJson(task.key);
  const pack = buildPack(key, task.type === 'data' ? dataBlobs(task.sources) : treeBlobs(task), {
    compression: true,
  });
  // Move the pack's own ArrayBuffer when it holds exactly the pack (Buffer.concat of a large
  // result does); copy otherwise.
  let bytes = pack.bytes.buffer as ArrayBuffer;
  if (pack.bytes.byteOffset !== 0 || bytes.byteLength !== pack.bytes.length) {
    bytes = new ArrayBuffer(pack.bytes.length);
    new Uint8Array(bytes).set(pack.bytes);
  }
  const result: PackTaskResult = { id: pack.id, bytes, entries: pack.entries };
  return Piscina.move({
    [Piscina.transferableSymbol]: [bytes],
    [Piscina.valueSymbol]: result,
  } as never) as unknown as PackTaskResult;
}

function dataBlobs(sources: DataBlobSource[]): PackBlobInput[] {
  const stored = readStoredBlocksSync(sources.flatMap((s) => ('block' in s ? [s.block] : [])));
  let next = 0;
  return sources.map((s): PackBlobInput => {
    if (!('block' in s)) return { type: 'data', id: s.id, plaintext: Buffer.alloc(s.zeroLength) };
    const data = stored[next++]!;
    return s.zstdLength !== undefined
      ? { type: 'data', id: s.id, zstd: data, uncompressedLength: s.zstdLength }
      : { type: 'data', id: s.id, plaintext: data };
  });
}

function treeBlobs(task: Extract<PackTask, { type: 'tree' }>): PackBlobInput[] {
  return unpackBlocks(task.blocks).map((data, i) => ({ type: 'tree', id: task.ids[i]!, plaintext: data }));
}
