import { constants } from 'node:fs';
import { type FileHandle, open, rm } from 'node:fs/promises';
import { errnoCode } from './durable-fs.ts';
import { releaseMemorySoon } from './release-memory.ts';

/*
 * Writes new files around the page cache (O_DIRECT): large files written once and not read
 * back soon (vault packs in a local-folder vault, large files a restore writes). Through the
 * page cache, each such file costs a copy into cache pages and evicts what is read again; on a
 * VM whose memory the host backs lazily the copy is worse, as every cache page not yet used is
 * first touched: measured on the bench machine, 768 MiB of 32 MiB files took 1.86 CPU-s of
 * kernel time that way and 0.06-0.13 CPU-s written directly, and a restore of 1.1 GiB of large
 * files spent 3 CPU-s in that copy.
 *
 * O_DIRECT asks for aligned memory, file offsets and lengths. Node gives no aligned buffers,
 * so the content goes through staging buffers whose aligned start is found once per buffer by
 * asking the kernel: the first offset from which an aligned direct write is accepted. Two
 * buffers per file: one fills while the other is written. The last piece is padded to a whole
 * block and the file truncated to its length. Where the file system refuses O_DIRECT (or no
 * start is accepted), files are written the ordinary way from then on.
 *
 * A file whose content is all in memory already (writeNew: a vault pack) gets one staging
 * buffer, not two: filling a piece is a copy of a few milliseconds, so nothing is gained by
 * filling the next while one is written, and an online backup writes several packs at once.
 */

/** Staging piece: large enough that the device sees large writes. */
const PIECE_BYTES = 4 * 1024 * 1024;
/** Offsets and lengths are multiples of this (covers 512-byte and 4 KiB sectors). */
const BLOCK = 4096;
/** A gap (skipped zeros) at least this long stays a hole; a shorter one is written as zeros. */
const HOLE_MIN_BYTES = 64 * 1024;
/** Smaller files gain nothing from it. */
export const DIRECT_MIN_BYTES = 1024 * 1024;
/**
 * Staging buffers are kept this long after the last file was closed, for the next one (packs
 * of an online backup follow each other), then dropped: a server that wrote packs an hour ago
 * should not hold 24 MiB for them.
 */
const KEEP_FREE_MS = 2_000;

interface Staging {
  buf: Buffer;
  /** Where in buf the aligned piece starts. */
  at: number;
}

export class DirectWriter {
  /** Unknown until the first direct open; false once the file system refused. */
  private supported: boolean | undefined;
  /** Staging buffers not in use (at most two per file being written). */
  private free: Staging[] = [];
  private openFiles = 0;
  private dropFree: NodeJS.Timeout | undefined;

  /**
   * Creates `file` (it must not exist), writes `data` and fsyncs it. The caller renames it into
   * place and removes it on failure, as with any temp file.
   */
  async writeNew(file: string, data: Uint8Array, mode: number): Promise<void> {
    const direct = data.length >= DIRECT_MIN_BYTES ? await this.create(file, mode, 1) : undefined;
    if (direct) {
      try {
        await direct.write(data, 0);
        await direct.finish(data.length);
        await direct.handle.sync();
      } finally {
        await direct.close();
      }
      return;
    }
    const fh = await open(file, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  /**
   * Creates `file` (it must not exist) for writing around the page cache, or returns undefined
   * (and leaves no file) where this file system does not write directly. With two staging
   * buffers (the default) a piece is written while the next one fills; with one, each piece is
   * written before the next fills.
   */
  async create(file: string, mode: number, buffers: 1 | 2 = 2): Promise<DirectFile | undefined> {
    if (this.supported === false) return undefined;
    let fh: FileHandle;
    try {
      fh = await open(
        file,
        constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW | constants.O_DIRECT,
        mode,
      );
      this.supported = true;
    } catch (err) {
      if (errnoCode(err) !== 'EINVAL') throw err;
      this.supported = false;
      return undefined;
    }
    const stagings: Staging[] = [];
    try {
      while (stagings.length < buffers) {
        const s = this.free.pop() ?? (await newStaging(fh));
        if (!s) break;
        stagings.push(s);
      }
    } catch (err) {
      this.free.push(...stagings);
      await fh.close();
      await rm(file, { force: true }); // the caller never got a file to clean up
      throw err;
    }
    if (stagings.length < buffers) {
      // It takes O_DIRECT opens but no aligned write: a file system that cannot do them.
      this.supported = false;
      this.free.push(...stagings);
      await fh.close();
      await rm(file, { force: true });
      return undefined;
    }
    this.openFiles += 1;
    clearTimeout(this.dropFree);
    return new DirectFile(fh, stagings, (taken) => this.closed(taken));
  }

  private closed(stagings: Staging[]): void {
    this.free.push(...stagings);
    this.openFiles -= 1;
    if (this.openFiles > 0) return;
    clearTimeout(this.dropFree);
    this.dropFree = setTimeout(() => {
      this.free = [];
      releaseMemorySoon();
    }, KEEP_FREE_MS);
    this.dropFree.unref();
  }
}

/**
 * One new file written directly: data at increasing offsets, gaps between them left as holes
 * (or, when short, written as zeros). With two staging buffers a piece is written while the
 * next one fills.
 */
export class DirectFile {
  /** File offset of `cur`'s first byte (a multiple of BLOCK). */
  private base = 0;
  /** Bytes in `cur`. */
  private filled = 0;
  /** The write of `other`, if one is in progress. */
  private pending: Promise<void> | undefined;
  private failure: Error | undefined;
  private closed = false;

  private cur: Staging;
  /** The buffer being written (or written last) while `cur` fills; `cur` itself when there is one. */
  private other: Staging;

  constructor(
    readonly handle: FileHandle,
    private readonly stagings: Staging[],
    /** Takes the staging buffers back once the file is closed. */
    private readonly release: (stagings: Staging[]) => void,
  ) {
    this.cur = stagings[0]!;
    this.other = stagings[1] ?? this.cur;
  }

  /** Writes `data` at `position`, which must not be before the end of what was written. */
  async write(data: Uint8Array, position: number): Promise<void> {
    const end = this.base + this.filled;
    if (position < end) throw new Error(`direct write at ${position} goes back before ${end}`);
    const gap = position - end;
    if (gap >= HOLE_MIN_BYTES) {
      await this.flush();
      // Past the padded end of what was written (the gap is much longer than a block).
      this.base = Math.floor(position / BLOCK) * BLOCK;
      await this.append(undefined, position - this.base);
    } else if (gap > 0) {
      await this.append(undefined, gap);
    }
    await this.append(data, data.length);
  }

  /** Writes what is left, waits for every write, and sets the file's length. */
  async finish(length: number): Promise<void> {
    await this.flush();
    await this.settle();
    await this.handle.truncate(length);
  }

  /** Waits for the write in progress (whatever its outcome), gives the buffers back, closes. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pending;
    this.release(this.stagings);
    await this.handle.close();
  }

  /** Copies `length` bytes of `data` (zeros when undefined) into the pieces. */
  private async append(data: Uint8Array | undefined, length: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const n = Math.min(PIECE_BYTES - this.filled, length - done);
      const at = this.cur.at + this.filled;
      if (data) this.cur.buf.set(data.subarray(done, done + n), at);
      else this.cur.buf.fill(0, at, at + n);
      this.filled += n;
      done += n;
      if (this.filled === PIECE_BYTES) await this.flush();
    }
  }

  /** Starts writing `cur` (padded to whole blocks) and goes on in the other buffer. */
  private async flush(): Promise<void> {
    if (this.filled === 0) return;
    const padded = Math.ceil(this.filled / BLOCK) * BLOCK;
    const { buf, at } = this.cur;
    buf.fill(0, at + this.filled, at + padded);
    await this.settle();
    const position = this.base;
    this.pending = writeAll(this.handle, buf, at, padded, position).catch((err: Error) => {
      this.failure ??= err;
    });
    [this.cur, this.other] = [this.other, this.cur];
    this.base += padded;
    this.filled = 0;
    // One buffer: it is the one being written, so it must be written before it fills again.
    if (this.cur === this.other) await this.settle();
  }

  /** Waits for the write in progress; throws if any write failed. */
  private async settle(): Promise<void> {
    await this.pending;
    this.pending = undefined;
    if (this.failure) throw this.failure;
  }
}

/** A staging buffer and its aligned start, found by trial writes of zeros at the file's start. */
async function newStaging(fh: FileHandle): Promise<Staging | undefined> {
  const buf = Buffer.alloc(PIECE_BYTES + BLOCK);
  // Two blocks: the write crosses a page boundary, where misaligned memory is refused. Zeros:
  // whatever the file holds at its start later is written over them, or is a hole (zeros).
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

async function writeAll(fh: FileHandle, buf: Buffer, at: number, length: number, position: number) {
  let done = 0;
  while (done < length) {
    const { bytesWritten } = await fh.write(buf, at + done, length - done, position + done);
    done += bytesWritten;
  }
}
