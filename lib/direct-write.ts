import { constants } from 'node:fs';
import { type FileHandle, open, rm } from 'node:fs/promises';
import { errnoCode } from './durable-fs.ts';

/*
 * Writes a new file's content around the page cache (O_DIRECT), for large files written once
 * and read rarely (vault packs in a local-folder vault). Through the page cache, each such file
 * costs a copy into cache pages and evicts what the server does read again (its chunk store);
 * on a freshly booted VM the copy is worse, as every cache page not yet used is first touched:
 * measured on the bench machine, 768 MiB of 32 MiB files took 1.86 CPU-s of kernel time that
 * way, and 0.06-0.13 CPU-s written directly.
 *
 * O_DIRECT asks for aligned memory, file offsets and lengths. Node gives no aligned buffers,
 * so the content is copied (a few ms per 32 MiB) through a staging buffer whose aligned start
 * is found once by asking the kernel: the first offset from which an aligned direct write is
 * accepted. The last piece is padded to a whole block and the file truncated to its length.
 * Where the file system refuses O_DIRECT (or no start is accepted), files are written the
 * ordinary way from then on.
 */

/** Staging piece: large enough that the device sees large writes. */
const PIECE_BYTES = 4 * 1024 * 1024;
/** Offsets and lengths are multiples of this (covers 512-byte and 4 KiB sectors). */
const BLOCK = 4096;
/** Smaller files gain nothing from it. */
export const DIRECT_MIN_BYTES = 1024 * 1024;

interface Staging {
  buf: Buffer;
  /** Where in buf the aligned piece starts. */
  at: number;
}

export class DirectWriter {
  /** Unknown until the first direct open; false once the file system refused. */
  private supported: boolean | undefined;
  /** Staging buffers not in use (one per write in progress at most). */
  private readonly free: Staging[] = [];

  /**
   * Creates `file` (it must not exist), writes `data` and fsyncs it. The caller renames it into
   * place and removes it on failure, as with any temp file.
   */
  async writeNew(file: string, data: Uint8Array, mode: number): Promise<void> {
    if (data.length >= DIRECT_MIN_BYTES && (await this.writeDirect(file, data, mode))) return;
    const fh = await open(file, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /** False (and no file left) where this file system does not write directly. */
  private async writeDirect(file: string, data: Uint8Array, mode: number): Promise<boolean> {
    const fh = await this.openDirect(file, mode);
    if (!fh) return false;
    let staging: Staging | undefined;
    try {
      staging = this.free.pop() ?? (await this.newStaging(fh));
      if (!staging) {
        // It takes O_DIRECT opens but no aligned write: a file system that cannot do them.
        this.supported = false;
      } else {
        await writeThrough(fh, data, staging);
        await fh.sync();
      }
    } finally {
      if (staging) this.free.push(staging);
      await fh.close();
    }
    if (!staging) await rm(file, { force: true });
    return staging !== undefined;
  }

  private async openDirect(file: string, mode: number): Promise<FileHandle | undefined> {
    if (this.supported === false) return undefined;
    try {
      const fh = await open(
        file,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_DIRECT,
        mode,
      );
      this.supported = true;
      return fh;
    } catch (err) {
      if (errnoCode(err) !== 'EINVAL') throw err;
      this.supported = false;
      return undefined;
    }
  }

  /** A staging buffer and its aligned start, found by trial writes at the file's start. */
  private async newStaging(fh: FileHandle): Promise<Staging | undefined> {
    const buf = Buffer.alloc(PIECE_BYTES + BLOCK);
    // Two blocks: the write crosses a page boundary, where misaligned memory is refused.
    for (let at = 0; at < BLOCK; at += 8) {
      try {
        await fh.write(buf, at, 2 * BLOCK, 0);
        return { buf, at };
      } catch (err) {
        if (errnoCode(err) !== 'EINVAL') throw err;
      }
    }
    return undefined;
  }
}

async function writeThrough(fh: FileHandle, data: Uint8Array, { buf, at }: Staging): Promise<void> {
  for (let pos = 0; pos < data.length; pos += PIECE_BYTES) {
    const n = Math.min(PIECE_BYTES, data.length - pos);
    buf.set(data.subarray(pos, pos + n), at);
    const padded = Math.ceil(n / BLOCK) * BLOCK;
    buf.fill(0, at + n, at + padded);
    let done = 0;
    while (done < padded) {
      const { bytesWritten } = await fh.write(buf, at + done, padded - done, pos + done);
      done += bytesWritten;
    }
  }
  if (data.length % BLOCK !== 0) await fh.truncate(data.length);
}
