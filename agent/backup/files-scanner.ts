import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  openSync,
  readdirSync,
  readlinkSync,
  readSync,
  type Stats,
} from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { Entry, FileEntry } from '../../protocol/entry.ts';
import { MAX_BLOCK_SIZE } from '../../protocol/version.ts';
import { ContentChunker, chunkBounds, fileBlockSize } from './content-chunker.ts';

/**
 * What the checksum cache remembers of a file. Size, mtime, ctime and inode together stand in for
 * "unchanged": ctime moves on any write or chmod and cannot be set back by a user, so a file
 * whose four values match is not read again.
 */
export interface CachedFile {
  size: number;
  mtimeMs: number;
  ctimeMs: number;
  ino: number;
  /** null: an all-zero block. */
  hashes: (Buffer | null)[];
}

/** The stat values that, unchanged, let the next backup skip reading a file. */
export type FileStamp = Omit<CachedFile, 'hashes'>;

/**
 * Where a file entry's block hashes come from: the checksum cache (file unchanged, not read),
 * or the blocks submitted since the previous entry (read now, hashed in the pool).
 */
export type FileSource =
  | { kind: 'cached'; cached: CachedFile }
  | { kind: 'read'; stamp: FileStamp; previous?: CachedFile };

/** Entries walked between two yields to the event loop. */
const YIELD_EVERY = 64;

/** A file is re-read at most this many times when it keeps changing while being read. */
const MAX_READ_ATTEMPTS = 3;

export interface ScanOptions {
  /** Absolute path of the datasource folder. */
  root: string;
  /**
   * The size blocks cluster around: files larger than it are cut by content (content-chunker.ts)
   * into blocks of half to four times it (scaled up for files of tens of GiB: fileBlockSize); a
   * smaller file is one block; an empty file has none.
   */
  blockSize: number;
  /** Keyed by entry path; an unchanged file reuses its cached hashes and is not read. */
  cache?: ReadonlyMap<string, CachedFile>;
  /**
   * Every freshly read block, in order; awaited before reading on: the backpressure point.
   * `previous` is the hash the file's cached version had at this block's position, if any.
   */
  submit(data: Buffer, previous: Uint8Array | null): Promise<void>;
  /** A buffer to read a block of `size` bytes into (default: a new one of its own). */
  allocate?(size: number): Buffer;
  /** The blocks submitted since the last entry belong to no entry (the file is read again or skipped). */
  onRestart(): void;
  /**
   * Each entry in walk order (depth-first, byte-sorted names). A file entry read now carries
   * empty `hashes`: they are those of the blocks submitted since the previous entry.
   */
  onEntry(entry: Entry, source?: FileSource): Promise<void>;
  /** Something that could not be read and was skipped, with its path and the cause. */
  onWarning(message: string): void;
  /** Test seam: called just before a file is opened. */
  beforeRead?(relPath: string): Promise<void>;
  signal?: AbortSignal;
}

export interface ScanResult {
  /** Bytes actually read from disk (files reused from the cache do not count). */
  bytesScanned: number;
  files: number;
  bytes: number;
  /** Files that kept changing while being read; backed up as last read. */
  inconsistent: string[];
}

/** The manifest schema caps paths at this length; a longer one could not be stored. */
const MAX_PATH_CHARS = 4096;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Walks `root` without following symlinks and reports each entry after its blocks. Errors from
 * the file system skip the item with a warning; errors from the callbacks (or an abort) end the
 * scan, because they mean the backup itself failed.
 */
export async function scanFiles(opts: ScanOptions): Promise<ScanResult> {
  if (!Number.isSafeInteger(opts.blockSize) || opts.blockSize <= 0) {
    throw new RangeError(`block size must be a positive integer, got ${opts.blockSize}`);
  }
  if (!path.isAbsolute(opts.root))
    throw new Error(`datasource root must be an absolute path, got "${opts.root}"`);
  const rootStat = await stat(opts.root); // the configured root may itself be a symlink: follow it
  if (!rootStat.isDirectory()) throw new Error(`datasource root ${opts.root} is not a directory`);
  const scan = new Scanner(opts);
  await scan.walkDir(opts.root, '');
  return scan.result;
}

class Scanner {
  readonly result: ScanResult = { bytesScanned: 0, files: 0, bytes: 0, inconsistent: [] };
  private sinceYield = 0;
  /** By block size: the datasource's, and larger ones for very large files (fileBlockSize). */
  private readonly chunkers = new Map<number, ContentChunker>();
  /** Read-ahead for cutting files by content: twice the largest block, kept for the scan. */
  private window: Buffer | undefined;

  constructor(private readonly opts: ScanOptions) {}

  /** A block's own buffer: moved to a worker thread whole, so only its own bytes go. */
  private allocate(size: number): Buffer {
    return this.opts.allocate ? this.opts.allocate(size) : Buffer.allocUnsafeSlow(size);
  }

  private chunkerFor(fileSize: number): ContentChunker {
    const size = fileBlockSize(this.opts.blockSize, fileSize, MAX_BLOCK_SIZE);
    let chunker = this.chunkers.get(size);
    if (!chunker) {
      chunker = new ContentChunker(chunkBounds(size, MAX_BLOCK_SIZE));
      this.chunkers.set(size, chunker);
    }
    return chunker;
  }

  async walkDir(abs: string, rel: string): Promise<void> {
    let names: Buffer[];
    try {
      names = readdirSync(abs, { encoding: 'buffer' });
    } catch (err) {
      this.warn(abs, 'cannot list directory', err);
      return;
    }
    // Byte order, not locale order: the manifest order must not depend on the agent's settings.
    names.sort(Buffer.compare);
    for (const raw of names) {
      this.opts.signal?.throwIfAborted();
      let name: string;
      try {
        name = utf8.decode(raw);
      } catch {
        this.opts.onWarning(`${path.join(abs, raw.toString('latin1'))}: skipped, name is not valid UTF-8`);
        continue;
      }
      const childAbs = path.join(abs, name);
      const childRel = rel === '' ? name : `${rel}/${name}`;
      if (childRel.length > MAX_PATH_CHARS) {
        this.opts.onWarning(`${childAbs}: skipped, path longer than ${MAX_PATH_CHARS} characters`);
        continue;
      }
      await this.visit(childAbs, childRel);
      // The walk uses synchronous file system calls (an async call costs tens of microseconds
      // of thread-pool round trip, per file): yield now and then so the link keeps flowing.
      if (++this.sinceYield >= YIELD_EVERY) {
        this.sinceYield = 0;
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    }
  }

  private async visit(abs: string, rel: string): Promise<void> {
    let st: Stats;
    try {
      st = lstatSync(abs);
    } catch (err) {
      this.warn(abs, 'cannot stat', err);
      return;
    }
    const meta = { path: rel, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtimeMs: st.mtimeMs };
    if (st.isDirectory()) {
      await this.opts.onEntry({ type: 'dir', ...meta });
      await this.walkDir(abs, rel);
    } else if (st.isSymbolicLink()) {
      let target: string;
      try {
        target = readlinkSync(abs);
      } catch (err) {
        this.warn(abs, 'cannot read symlink', err);
        return;
      }
      await this.opts.onEntry({ type: 'symlink', ...meta, target });
    } else if (st.isFile()) {
      await this.visitFile(abs, rel, st);
    } else {
      this.opts.onWarning(`${abs}: skipped, ${kindOf(st)} cannot be backed up`);
    }
  }

  private async visitFile(abs: string, rel: string, st: Stats): Promise<void> {
    const cached = this.opts.cache?.get(rel);
    if (cached && isUnchanged(cached, st)) {
      await this.emitFile(rel, st, cached.size, { kind: 'cached', cached });
      return;
    }
    await this.opts.beforeRead?.(rel);
    let fd: number;
    try {
      // NOFOLLOW and NONBLOCK: the name may have become a symlink or FIFO since lstat.
      fd = openSync(abs, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (err) {
      this.warn(
        abs,
        (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'vanished before it was read' : 'cannot open',
        err,
      );
      return;
    }
    try {
      for (let attempt = 1; ; attempt++) {
        let opened: Stats;
        try {
          opened = fstatSync(fd);
        } catch (err) {
          this.warn(abs, 'cannot stat', err);
          return;
        }
        if (!opened.isFile()) {
          this.opts.onWarning(`${abs}: skipped, it was replaced by ${kindOf(opened)} while scanning`);
          return;
        }
        const read = await this.readBlocks(fd, abs, opened.size, cached?.hashes ?? []);
        if (!read) return;
        // Changed while being read (size or times moved)? Read again, a bounded number of times.
        let after = opened;
        try {
          after = fstatSync(fd);
        } catch {
          // keep the first stat: the read itself succeeded
        }
        const changed =
          after.size !== opened.size || after.mtimeMs !== opened.mtimeMs || after.ctimeMs !== opened.ctimeMs;
        if (changed && attempt < MAX_READ_ATTEMPTS) {
          this.opts.onRestart();
          continue;
        }
        if (changed) {
          this.result.inconsistent.push(rel);
          this.opts.onWarning(
            `${abs}: changed while being read ${attempt} times; backed up as last read (inconsistent)`,
          );
        }
        // The stat taken before reading is what the cache keeps: if the file changed while being
        // read, its times differ next time and it is read again.
        const stamp: FileStamp = {
          size: read.size,
          mtimeMs: opened.mtimeMs,
          ctimeMs: opened.ctimeMs,
          ino: opened.ino,
        };
        await this.emitFile(rel, opened, read.size, { kind: 'read', stamp, previous: cached });
        return;
      }
    } finally {
      try {
        closeSync(fd);
      } catch {
        // nothing useful to do: the data was read
      }
    }
  }

  /**
   * Reads up to `expected` bytes and submits them as content-defined blocks; returns undefined
   * (after a warning) when reading fails. Stops at the size stat reported: a file that keeps
   * growing (a log) must not hold the scan; a file that shrinks ends where reading does.
   */
  private async readBlocks(
    fd: number,
    abs: string,
    expected: number,
    previous: CachedFile['hashes'],
  ): Promise<{ size: number } | undefined> {
    try {
      // A file no larger than the block size is one block: cutting it would cost a scan and
      // more blocks for little to find.
      return expected <= this.opts.blockSize
        ? await this.readWhole(fd, expected, previous)
        : await this.readChunked(fd, expected, previous);
    } catch (err) {
      if (!(err instanceof ReadFailure)) throw err;
      this.opts.onRestart();
      this.warn(abs, 'read failed', err.cause);
      return undefined;
    }
  }

  /** A file of one block is read straight into that block's own buffer. */
  private async readWhole(
    fd: number,
    expected: number,
    previous: CachedFile['hashes'],
  ): Promise<{ size: number }> {
    if (expected === 0) return { size: 0 };
    let data = this.allocate(expected);
    const got = readFully(fd, data, 0);
    if (got === 0) return { size: 0 }; // emptied while being read
    if (got < expected) {
      const short = this.allocate(got);
      data.copy(short, 0, 0, got);
      data = short;
    }
    this.result.bytesScanned += got;
    await this.opts.submit(data, previous[0] ?? null);
    return { size: got };
  }

  /**
   * Larger files go through a window holding at least one largest block ahead (unless the file
   * ends sooner); each block is cut where the content says and copied out into its own buffer.
   */
  private async readChunked(
    fd: number,
    expected: number,
    previous: CachedFile['hashes'],
  ): Promise<{ size: number }> {
    const chunker = this.chunkerFor(expected);
    const { max } = chunker.bounds;
    if (!this.window || this.window.length < 2 * max) this.window = Buffer.allocUnsafeSlow(2 * max);
    const win = this.window;
    let start = 0;
    let end = 0;
    let position = 0;
    let ended = false;
    let index = 0;
    for (;;) {
      this.opts.signal?.throwIfAborted();
      if (!ended && end - start < max) {
        if (win.length - start < max) {
          win.copyWithin(0, start, end);
          end -= start;
          start = 0;
        }
        const want = Math.min(start + max - end, expected - position);
        const got = want > 0 ? readFully(fd, win.subarray(end, end + want), position) : 0;
        position += got;
        end += got;
        this.result.bytesScanned += got;
        ended = got < want || position >= expected;
      }
      if (end === start) break;
      const length = chunker.cut(win, start, end);
      const block = this.allocate(length);
      win.copy(block, 0, start, start + length);
      start += length;
      await this.opts.submit(block, previous[index++] ?? null);
    }
    return { size: position };
  }

  private async emitFile(rel: string, st: Stats, size: number, source: FileSource): Promise<void> {
    const entry: FileEntry = {
      type: 'file',
      path: rel,
      size,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtimeMs: st.mtimeMs,
      hashes: source.kind === 'cached' ? source.cached.hashes : [],
    };
    await this.opts.onEntry(entry, source);
    this.result.files += 1;
    this.result.bytes += entry.size;
  }

  private warn(abs: string, what: string, err: unknown): void {
    const e = err as NodeJS.ErrnoException;
    this.opts.onWarning(`${abs}: skipped, ${what} (${e.code ?? 'error'}: ${e.message})`);
  }
}

/** A changed block size or way of cutting is caught when the cache is loaded (its layout). */
function isUnchanged(c: CachedFile, st: Stats): boolean {
  return c.size === st.size && c.mtimeMs === st.mtimeMs && c.ctimeMs === st.ctimeMs && c.ino === st.ino;
}

/** A failed read of the file (skip it), as opposed to a failure of the callbacks (end the scan). */
class ReadFailure extends Error {
  constructor(override readonly cause: unknown) {
    super('read failed');
  }
}

/** Fills `buf` from `position` unless end of file comes first; returns the bytes read. */
function readFully(fd: number, buf: Buffer, position: number): number {
  let done = 0;
  try {
    while (done < buf.length) {
      const bytesRead = readSync(fd, buf, done, buf.length - done, position + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
  } catch (err) {
    throw new ReadFailure(err);
  }
  return done;
}

function kindOf(st: Stats): string {
  if (st.isSocket()) return 'a socket';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symlink';
  return 'an unknown file type';
}
