import { Piscina } from 'piscina';
import { collectYoungGarbage } from '../../lib/collect-garbage.ts';
import { type PackedBlocks, unpackBlocks } from '../../lib/packed-blocks.ts';
import { StoredBlockReader, type StoredBlockRef } from '../chunk-store/sync-reader.ts';
import { type MasterKeyJson, masterKeyFromJson } from './format/crypto.ts';
import { type BuiltPack, maxPackBytes, PackBuilder, type PackEntry } from './format/pack.ts';

/*
 * Pool worker of the online-backup pipeline: one pack per task. Data blobs are read here,
 * straight from the chunk store's pack files, so the main thread only schedules, uploads and
 * records. Blocks the chunk store holds as zstd go into the pack with their compression as it is
 * (checked to decompress to their id); raw ones are compressed here where that helps. Tree blobs
 * are built on the main thread and arrive as one moved buffer. Everything is encrypted with the
 * vault's master key.
 *
 * The pack is built into the task's slot, shared memory the main thread lends and uploads from,
 * then lends again for a later pack: no pack-sized buffer is allocated per pack, in this thread
 * (whose fresh pages cost page faults) or on the main thread (where each would be external memory
 * that drives its garbage collector, which then marks the whole heap every pack or two). A pack
 * too large for its slot (a tree pack holding one very large folder's tree) is built in a buffer
 * of its own and moved back instead.
 *
 * Memory: blocks are read one at a time into a buffer this thread keeps, and each is encrypted
 * straight into the pack (format/pack.ts, PackBuilder), so a task holds its pack and about one
 * block besides. What it leaves behind is each blob's ciphertext (Node's cipher returns a new
 * buffer, copied into the pack): the young generation is collected every COLLECT_BYTES of
 * blobs, as otherwise each thread held up to ~32 MiB of dead ciphertext (measured: the online
 * backup's two threads' malloc arenas at 35-39 MiB each).
 */

/** A data blob to pack: a stored chunk-store block (zstd when zstdLength is set), or zeros. */
export type DataBlobSource =
  | { id: string; zeroLength: number }
  | { id: string; block: StoredBlockRef; zstdLength?: number };

export type PackTask = { key: MasterKeyJson; slot: SharedArrayBuffer } & (
  | { type: 'data'; sources: DataBlobSource[] }
  | { type: 'tree'; blocks: PackedBlocks; ids: string[] }
);

export interface PackTaskResult {
  id: string;
  entries: PackEntry[];
  /** The pack's length: its bytes are the slot's first `length` bytes, or `moved` when set. */
  length: number;
  /** The pack, when it did not fit the slot. */
  moved?: ArrayBuffer;
}

/** Blob bytes packed between two collections of the young generation (see above). */
const COLLECT_BYTES = 4 * 1024 * 1024;
let packedSinceCollect = 0;

function packed(bytes: number): void {
  packedSinceCollect += bytes;
  if (packedSinceCollect < COLLECT_BYTES) return;
  packedSinceCollect = 0;
  collectYoungGarbage();
}

const reader = new StoredBlockReader();
/** Zeros for zero blobs, kept by this thread (never written to). */
let zeros: Buffer | undefined;

export default function buildPackTask(task: PackTask): PackTaskResult {
  const key = masterKeyFromJson(task.key);
  const pack = task.type === 'data' ? dataPack(key, task.sources, task.slot) : treePack(key, task);
  const result: PackTaskResult = { id: pack.id, entries: pack.entries, length: pack.bytes.length };
  if (pack.bytes.buffer === task.slot) return result;
  // Built in its own buffer, which holds exactly the pack (PackBuilder fits it): moved, not copied.
  result.moved = pack.bytes.buffer as ArrayBuffer;
  return Piscina.move({
    [Piscina.transferableSymbol]: [result.moved],
    [Piscina.valueSymbol]: result,
  } as never) as unknown as PackTaskResult;
}

/** The slot as the builder's buffer, when the largest pack of these inputs fits it. */
function intoSlot(slot: SharedArrayBuffer, limits: { blobs: number; inputBytes: number }) {
  return maxPackBytes(limits) <= slot.byteLength ? new Uint8Array(slot) : undefined;
}

function dataPack(
  key: ReturnType<typeof masterKeyFromJson>,
  sources: DataBlobSource[],
  slot: SharedArrayBuffer,
): BuiltPack {
  let inputBytes = 0;
  for (const s of sources) inputBytes += 'block' in s ? s.block.storedSize : s.zeroLength;
  const limits = { blobs: sources.length, inputBytes };
  const builder = new PackBuilder(key, limits, { compression: true, into: intoSlot(slot, limits) });
  try {
    for (const s of sources) {
      if (!('block' in s)) {
        if (!zeros || zeros.length < s.zeroLength) zeros = Buffer.alloc(s.zeroLength);
        builder.add({ type: 'data', id: s.id, plaintext: zeros.subarray(0, s.zeroLength) });
        packed(s.zeroLength);
        continue;
      }
      const data = reader.read(s.block);
      builder.add(
        s.zstdLength !== undefined
          ? { type: 'data', id: s.id, zstd: data, uncompressedLength: s.zstdLength }
          : { type: 'data', id: s.id, plaintext: data },
      );
      packed(data.length);
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
  const limits = { blobs: blobs.length, inputBytes: task.blocks.buffer.byteLength };
  const builder = new PackBuilder(key, limits, { into: intoSlot(task.slot, limits) });
  blobs.forEach((data, i) => {
    builder.add({ type: 'tree', id: task.ids[i]!, plaintext: data });
    packed(data.length);
  });
  return builder.finish();
}
