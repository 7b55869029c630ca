import { constants } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import path from 'node:path';
import type { FileEntry } from '../../protocol/entry.ts';
import type { CachedFile, FileSource, FileStamp, ScanResult } from './files-scanner.ts';

export interface ImageScanOptions {
  /** A disk-image file or a block device. */
  path: string;
  blockSize: number;
  /** The checksum cache entry of the image from the base recovery point. */
  cached?: CachedFile;
  /** `previous`: the cached hash of the block at this position, if any. */
  submit(data: Buffer, previous: Uint8Array | null): Promise<void>;
  /** A buffer to read a block of `size` bytes into (default: a new one of its own). */
  allocate?(size: number): Buffer;
  onRestart(): void;
  onEntry(entry: FileEntry, source: FileSource): Promise<void>;
  signal?: AbortSignal;
}

/** Reads are this large whatever the block size: fewer system calls for 64 KiB blocks. */
const READ_BYTES = 4 * 1024 * 1024;

/**
 * Reads an image datasource as one file entry (named after the image) in fixed-size blocks.
 * Every block is read and hashed: without change tracking from the OS, reading is the only way
 * to find changed blocks, but only changed ones cross the wire. An image file whose size,
 * times and inode match the cache is not read at all.
 */
export async function scanImage(opts: ImageScanOptions): Promise<ScanResult & { changedWhileRead: boolean }> {
  const st = await stat(opts.path);
  if (!st.isFile() && !st.isBlockDevice())
    throw new Error(`${opts.path} is neither a disk-image file nor a block device`);
  const result = {
    bytesScanned: 0,
    files: 1,
    bytes: 0,
    inconsistent: [] as string[],
    changedWhileRead: false,
  };
  const base = {
    type: 'file' as const,
    path: path.basename(opts.path),
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    mtimeMs: st.mtimeMs,
  };
  const c = opts.cached;
  if (
    st.isFile() &&
    c &&
    c.size === st.size &&
    c.mtimeMs === st.mtimeMs &&
    c.ctimeMs === st.ctimeMs &&
    c.ino === st.ino
  ) {
    result.bytes = c.size;
    await opts.onEntry({ ...base, size: c.size, hashes: c.hashes }, { kind: 'cached', cached: c });
    return result;
  }
  const fh = await open(opts.path, constants.O_RDONLY);
  try {
    const chunk = Buffer.allocUnsafe(Math.max(READ_BYTES, opts.blockSize));
    let offset = 0;
    for (;;) {
      opts.signal?.throwIfAborted();
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, offset);
      if (bytesRead === 0) break;
      for (let at = 0; at < bytesRead; at += opts.blockSize) {
        const len = Math.min(opts.blockSize, bytesRead - at);
        // Each block gets a buffer of its own so only its bytes go to a worker.
        const block = opts.allocate ? opts.allocate(len) : Buffer.allocUnsafeSlow(len);
        chunk.copy(block, 0, at, at + len);
        await opts.submit(block, c?.hashes[(offset + at) / opts.blockSize] ?? null);
      }
      offset += bytesRead;
      result.bytesScanned += bytesRead;
    }
    const after = await fh.stat();
    // A device node's times do not move when the disk is written through a mounted file
    // system: without a snapshot or scripts, a live device is only ever crash-consistent.
    result.changedWhileRead = st.isBlockDevice() || after.mtimeMs !== st.mtimeMs || after.size !== st.size;
    result.bytes = offset;
    const stamp: FileStamp = { size: offset, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino };
    await opts.onEntry({ ...base, size: offset, hashes: [] }, { kind: 'read', stamp, previous: c });
    return result;
  } catch (err) {
    opts.onRestart();
    throw err;
  } finally {
    await fh.close();
  }
}
