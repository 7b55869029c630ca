import type { FileHandle } from 'node:fs/promises';

/**
 * Pack files hold the chunk store's blocks (docs/chunk-store.md, "Pack file"):
 *
 *   file header   4 bytes  magic 'HFP1'
 *   record        32 bytes block hash (SHA-256 of the raw block)
 *                  1 byte  encoding: 0 = raw, 1 = zstd
 *                  4 bytes raw length, unsigned big-endian
 *                  4 bytes stored (payload) length, unsigned big-endian
 *                  ...     payload
 *   record ...
 *
 * Records are self-describing so a pack can be scanned without the database (checks,
 * rebuilding the index). A torn record at the end (crash mid-append) is never referenced:
 * index rows are written only after the pack was fsynced.
 */

export const PACK_MAGIC = Buffer.from('HFP1', 'latin1');
export const RECORD_HEADER_BYTES = 41;
/** A pack is closed once it passes this size; new records go to a new pack. */
export const PACK_TARGET_BYTES = 64 * 1024 * 1024;

export function recordHeader(hash: Uint8Array, encoding: number, size: number, storedSize: number): Buffer {
  const h = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
  h.set(hash, 0);
  h.writeUInt8(encoding, 32);
  h.writeUInt32BE(size, 33);
  h.writeUInt32BE(storedSize, 37);
  return h;
}

export interface PackRecord {
  hash: string;
  encoding: number;
  size: number;
  storedSize: number;
  /** Offset of the payload in the pack file. */
  offset: number;
}

/** Walks the records of a pack; stops quietly at a torn tail. */
export async function* scanPack(fh: FileHandle): AsyncGenerator<PackRecord> {
  const { size: fileSize } = await fh.stat();
  const magic = Buffer.alloc(4);
  await fh.read(magic, 0, 4, 0);
  if (!magic.equals(PACK_MAGIC)) throw new Error('not a Holdfast pack (bad magic)');
  const header = Buffer.alloc(RECORD_HEADER_BYTES);
  let pos = PACK_MAGIC.length;
  while (pos + RECORD_HEADER_BYTES <= fileSize) {
    await fh.read(header, 0, RECORD_HEADER_BYTES, pos);
    const storedSize = header.readUInt32BE(37);
    const offset = pos + RECORD_HEADER_BYTES;
    if (offset + storedSize > fileSize) return;
    yield {
      hash: header.subarray(0, 32).toString('hex'),
      encoding: header.readUInt8(32),
      size: header.readUInt32BE(33),
      storedSize,
      offset,
    };
    pos = offset + storedSize;
  }
}
