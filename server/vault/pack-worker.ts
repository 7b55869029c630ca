import { Piscina } from 'piscina';
import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { StoredBlockReader, type StoredBlockRef } from '../chunk-store/sync-reader.ts';
import { type MasterKeyJson, masterKeyFromJson } from './format/crypto.ts';
import { type BuiltPack, PackBuilder, type PackEntry } from './format/pack.ts';

/*
 * Pool worker of the online-backup pipeline: one pack per task. Data blobs are read here,
 * straight from the chunk store's pack files, so the main thread only schedules, uploads and
 * records. Blocks the chunk store holds as zstd go into the pack with their compression as it is
 * (checked to decompress to their id); raw ones are compressed here where that helps. Tree blobs
 * are built on the main thread and arrive as one moved buffer. Everything is encrypted with the
 * vault's master key; the pack goes back moved, not copied.
 *
 * Memory: blocks are read one at a time into a buffer this thread keeps, and each is encrypted
 * straight into the pack (format/pack.ts, PackBuilder), so a task holds its pack and about one
 * block besides, and leaves little for the garbage collector.
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

const reader = new StoredBlockReader();
/** Zeros for zero blobs, kept by this thread (never written to). */
let zeros: Buffer | undefined;

export default function buildPackTask(task: PackTask): PackTaskResult {
  const key = masterKeyFromJson(task.key);
  const pack = task.type === 'data' ? dataPack(key, task.sources) : treePack(key, task);
  // Move the pack's own ArrayBuffer when it holds exactly the pack (PackBuilder's does); copy otherwise.
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

function dataPack(key: ReturnType<typeof masterKeyFromJson>, sources: DataBlobSource[]): BuiltPack {
  let inputBytes = 0;
  for (const s of sources) inputBytes += 'block' in s ? s.block.storedSize : s.zeroLength;
  const builder = new PackBuilder(key, { blobs: sources.length, inputBytes }, { compression: true });
  try {
    for (const s of sources) {
      if (!('block' in s)) {
        if (!zeros || zeros.length < s.zeroLength) zeros = Buffer.alloc(s.zeroLength);
        builder.add({ type: 'data', id: s.id, plaintext: zeros.subarray(0, s.zeroLength) });
        continue;
      }
      const data = reader.read(s.block);
      builder.add(
        s.zstdLength !== undefined
          ? { type: 'data', id: s.id, zstd: data, uncompressedLength: s.zstdLength }
          : { type: 'data', id: s.id, plaintext: data },
      );
    }
  } finally {
    reader.closeFiles();
  }
  return builder.finish();
}

function treePack(
  key: ReturnType<typeof masterKeyFromJson>,
  task: Extract<PackTask, { type: 'tree' }>,
): BuiltPack {
  const blobs = unpackBlocks(task.blocks);
  const builder = new PackBuilder(key, { blobs: blobs.length, inputBytes: task.blocks.buffer.byteLength });
  blobs.forEach((data, i) => {
    builder.add({ type: 'tree', id: task.ids[i]!, plaintext: data });
  });
  return builder.finish();
}
