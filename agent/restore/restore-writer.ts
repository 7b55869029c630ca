import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  ftruncateSync,
  futimesSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  renameSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { DIRECT_MIN_BYTES, type DirectFile, DirectWriter } from '../../lib/direct-write.ts';
import { type Entry, type FileEntry, isSafeRelativePath } from '../../protocol/entry.ts';
import { blockHash, hashHex } from '../../protocol/hash.ts';

const execFileAsync = promisify(execFile);

/** A restore that must stop: bad path, escape attempt, wrong block, incomplete file. */
export class RestoreError extends Error {
  override name = 'RestoreError';
}

type DirEntry = Extract<Entry, { type: 'dir' }>;

interface OpenFile {
  entry: FileEntry;
  tmp: string;
  fd: number;
  /** Set for a large file, written around the page cache. */
  direct?: DirectFile;
  next: number;
  written: number;
  /** End of the last block written (below `written` when zero blocks were skipped after it). */
  dataEnd: number;
}

/**
 * Writes a recovery point into `target` and nowhere else. The manifest comes from the server, so
 * it is treated as hostile: every path is checked to be relative without '..', and every parent
 * between the target and an entry must be a real directory, not a symlink, at the moment it is
 * used. That also catches the classic trick of restoring `a -> /etc` and then `a/passwd`.
 * Files are written to an O_EXCL|O_NOFOLLOW temp file beside their final name and renamed over
 * it once complete and verified, so a failed restore never leaves a half-written file under a
 * real name, and a symlink already at that name is replaced, never written through.
 *
 * Node has no openat(), so a local user who can write into the target could still swap a
 * checked directory for a symlink between the check and the use; restore into folders that
 * untrusted users cannot write to. Metadata is set through file descriptors opened with
 * O_NOFOLLOW where possible, which closes that window for chmod/chown/utimes.
 *
 * File system calls are synchronous: a restore is thousands of small steps a second, and an
 * asynchronous call costs a thread-pool round trip each (a tree of small files restored three
 * times slower that way). The restore job yields between frames. Large files are the exception:
 * they are written around the page cache (lib/direct-write.ts), in pieces written while the
 * next blocks arrive, which spares the restore the copy into cache pages, its largest cost.
 */
export class RestoreWriter {
  private current: OpenFile | undefined;
  private readonly dirs: DirEntry[] = [];
  private files = 0;
  private bytes = 0;
  private finished = false;
  private readonly asRoot = process.getuid?.() === 0;
  /** Relative paths of directories verified to be real directories (not symlinks). */
  private readonly checkedDirs = new Set<string>();
  private readonly direct = new DirectWriter();
  /**
   * Temp names: a random prefix per restore and a counter (a random draw per file cost more than
   * writing the file).
   */
  private readonly tempPrefix = `.hf-restore-${randomBytes(8).toString('hex')}-`;
  private temps = 0;

  private constructor(
    private readonly root: string,
    private readonly blockSize: number,
  ) {}

  /** `blockSize` is the recovery point's: it places the blocks that are all zeros (null hashes). */
  static async open(target: string, blockSize: number): Promise<RestoreWriter> {
    if (!path.isAbsolute(target))
      throw new RestoreError(`restore target must be an absolute path, got "${target}"`);
    await mkdir(target, { recursive: true });
    const st = await stat(target); // the target itself may be a symlink the operator chose
    if (!st.isDirectory()) throw new RestoreError(`restore target ${target} is not a directory`);
    return new RestoreWriter(target, blockSize);
  }

  async beginEntry(entry: Entry): Promise<void> {
    if (this.finished) throw new RestoreError('restore already finished');
    if (this.current) {
      const c = this.current;
      throw new RestoreError(
        `${c.entry.path}: got entry ${entry.path} after ${c.next} of ${c.entry.hashes.length} blocks`,
      );
    }
    if (!isSafeRelativePath(entry.path))
      throw new RestoreError(`unsafe path in manifest: ${JSON.stringify(entry.path)}`);
    await this.checkParents(entry.path, true);
    const abs = this.abs(entry.path);
    switch (entry.type) {
      case 'dir':
        return this.makeDir(entry, abs);
      case 'symlink':
        return this.makeSymlink(entry, abs);
      case 'file':
        return this.startFile(entry, abs);
    }
  }

  /** Whether a file is being restored and waits for its next block. */
  get wantsBlock(): boolean {
    return this.current !== undefined;
  }

  async writeBlock(data: Buffer): Promise<void> {
    const c = this.current;
    if (!c) throw new RestoreError('got a block but no file is being restored');
    const expected = c.entry.hashes[c.next];
    if (!expected) throw new RestoreError(`${c.entry.path}: got more blocks than the manifest lists`);
    const actual = blockHash(data);
    if (!actual.equals(expected)) {
      await this.abort();
      throw new RestoreError(
        `${c.entry.path}: block ${c.next} has hash ${hashHex(actual)}, the manifest says ${hashHex(expected)}`,
      );
    }
    if (c.written + data.length > c.entry.size) {
      await this.abort();
      throw new RestoreError(
        `${c.entry.path}: blocks add up to more than the ${c.entry.size} bytes of the manifest`,
      );
    }
    try {
      if (c.direct) {
        await c.direct.write(data, c.written);
      } else {
        let done = 0;
        while (done < data.length) {
          const bytesWritten = writeSync(c.fd, data, done, data.length - done, c.written + done);
          done += bytesWritten;
        }
      }
    } catch (err) {
      await this.abort();
      throw err;
    }
    c.written += data.length;
    c.dataEnd = c.written;
    c.next += 1;
    await this.skipZeroBlocks();
  }

  /** Zero blocks are not sent: they stay holes in the file (read back as zeros). */
  private async skipZeroBlocks(): Promise<void> {
    const c = this.current!;
    while (c.next < c.entry.hashes.length && c.entry.hashes[c.next] === null) {
      c.written += Math.min(this.blockSize, c.entry.size - c.written);
      c.next += 1;
    }
    if (c.next === c.entry.hashes.length) await this.completeFile();
  }

  async finish(): Promise<{ files: number; bytes: number }> {
    if (this.current) {
      const c = this.current;
      await this.abort();
      throw new RestoreError(`${c.entry.path}: incomplete, got ${c.next} of ${c.entry.hashes.length} blocks`);
    }
    this.finished = true;
    // Deepest first, after all contents: writing into a directory moves its mtime, and a
    // read-only mode would stop us writing into it.
    const byDepth = this.dirs.sort((a, b) => depth(b.path) - depth(a.path));
    for (const dir of byDepth) {
      // Checked afresh: metadata (and, as root, ownership) is about to be applied.
      await this.checkParents(dir.path, false, false);
      const fd = this.openNoFollow(dir.path, constants.O_RDONLY | constants.O_DIRECTORY);
      try {
        this.applyMeta(fd, dir);
      } finally {
        closeSync(fd);
      }
    }
    // One file-system-wide sync makes every restored file and name durable before the
    // restore reports success.
    await syncFileSystem(this.root);
    return { files: this.files, bytes: this.bytes };
  }

  /** Removes a half-written temp file; safe to call at any time, any number of times. */
  async abort(): Promise<void> {
    const c = this.current;
    this.current = undefined;
    if (!c) return;
    if (c.direct) await c.direct.close().catch(() => {});
    else if (c.fd >= 0) quietly(() => closeSync(c.fd));
    quietly(() => unlinkSync(c.tmp));
  }

  private async makeDir(entry: DirEntry, abs: string): Promise<void> {
    const existing = lstatOrUndefined(abs);
    if (existing && !existing.isDirectory()) unlinkSync(abs); // a file or symlink in the way
    if (!existing?.isDirectory()) {
      mkdirSync(abs, { mode: 0o700 });
    } else if (!this.asRoot && (existing.mode & 0o700) !== 0o700 && existing.uid === process.getuid?.()) {
      // A directory left read-only by an earlier restore must take our files; finish() sets
      // the recorded mode back.
      const fd = this.openNoFollow(entry.path, constants.O_RDONLY | constants.O_DIRECTORY);
      try {
        fchmodSync(fd, (existing.mode & 0o7777) | 0o700);
      } finally {
        closeSync(fd);
      }
    }
    this.dirs.push(entry);
  }

  private async makeSymlink(entry: Extract<Entry, { type: 'symlink' }>, abs: string): Promise<void> {
    // Made under a temp name and renamed, so it replaces a file or symlink atomically; rename
    // refuses to replace a directory, which we will not delete.
    const tmp = this.tempName(abs);
    symlinkSync(entry.target, tmp);
    try {
      if (this.asRoot) lchownSync(tmp, entry.uid, entry.gid);
      const t = utimesSeconds(entry.mtimeMs);
      lutimesSync(tmp, t, t);
      this.renameInto(tmp, abs, entry.path);
    } catch (err) {
      quietly(() => unlinkSync(tmp));
      throw err;
    }
  }

  private async startFile(entry: FileEntry, abs: string): Promise<void> {
    const tmp = this.tempName(abs);
    // A fresh random name (O_EXCL) in a directory just checked: never an existing symlink.
    const direct = entry.size >= DIRECT_MIN_BYTES ? await this.direct.create(tmp, 0o600) : undefined;
    const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
    const fd = direct ? direct.handle.fd : openSync(tmp, flags, 0o600);
    this.current = { entry, tmp, fd, direct, next: 0, written: 0, dataEnd: 0 };
    await this.skipZeroBlocks();
  }

  private async completeFile(): Promise<void> {
    const c = this.current!;
    try {
      if (c.written !== c.entry.size) {
        throw new RestoreError(
          `${c.entry.path}: blocks add up to ${c.written} bytes, the manifest says ${c.entry.size}`,
        );
      }
      // A trailing hole needs the length set explicitly.
      if (c.direct) await c.direct.finish(c.entry.size);
      else if (c.dataEnd !== c.entry.size) ftruncateSync(c.fd, c.entry.size);
      this.applyMeta(c.fd, c.entry);
      // No fsync per file (thousands of small files would each wait for the disk): finish()
      // syncs the whole file system once.
      if (c.direct) await c.direct.close();
      else closeSync(c.fd);
      c.fd = -1; // closed: abort() must not close the number again (it may be reused by now)
      // Parents not yet known as directories of this restore are checked again right before
      // the name appears (blocks arrived over the network in between).
      await this.checkParents(c.entry.path, false);
      this.renameInto(c.tmp, this.abs(c.entry.path), c.entry.path);
    } catch (err) {
      await this.abort();
      throw err;
    }
    this.current = undefined;
    this.files += 1;
    this.bytes += c.entry.size;
  }

  /** chown before chmod: chown clears setuid/setgid bits that chmod then sets back. */
  private applyMeta(fd: number, entry: DirEntry | FileEntry): void {
    if (this.asRoot) fchownSync(fd, entry.uid, entry.gid);
    fchmodSync(fd, entry.mode & 0o7777);
    const t = utimesSeconds(entry.mtimeMs);
    futimesSync(fd, t, t);
  }

  private renameInto(tmp: string, abs: string, rel: string): void {
    try {
      renameSync(tmp, abs);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EISDIR' || code === 'ENOTEMPTY' || code === 'EEXIST') {
        throw new RestoreError(`${rel}: a directory is in the way in the restore target; not replacing it`);
      }
      throw err;
    }
  }

  /**
   * Every component between the target and `rel` must be a real directory. With `create`,
   * missing ones are made (a restore of a single file whose folders are gone).
   */
  private async checkParents(rel: string, create: boolean, trustChecked = true): Promise<void> {
    const parts = rel.split('/');
    let sofar = this.root;
    for (let i = 0; i < parts.length - 1; i++) {
      sofar = path.join(sofar, parts[i]!);
      const prefix = parts.slice(0, i + 1).join('/');
      // Directories this restore created or checked stay real directories: the restore never
      // replaces a directory (renameInto refuses), so one lstat per directory is enough.
      if (trustChecked && this.checkedDirs.has(prefix)) continue;
      let st = lstatOrUndefined(sofar);
      if (!st && create) {
        try {
          mkdirSync(sofar);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
        }
        st = lstatOrUndefined(sofar);
      }
      const shown = parts.slice(0, i + 1).join('/');
      if (!st) throw new RestoreError(`${rel}: parent ${shown} is missing`);
      if (st.isSymbolicLink())
        throw new RestoreError(`${rel}: parent ${shown} is a symlink, which escapes the target`);
      if (!st.isDirectory()) throw new RestoreError(`${rel}: parent ${shown} is not a directory`);
      this.checkedDirs.add(prefix);
    }
  }

  private openNoFollow(rel: string, flags: number): number {
    return openSync(this.abs(rel), flags | constants.O_NOFOLLOW);
  }

  /** Short, so a 255-byte file name still gets a temp name that fits. */
  private tempName(abs: string): string {
    return path.join(path.dirname(abs), `${this.tempPrefix}${++this.temps}.tmp`);
  }

  private abs(rel: string): string {
    return path.join(this.root, ...rel.split('/'));
  }
}

/**
 * libuv truncates the seconds it is given to whole microseconds, so `ms / 1000` can land one
 * microsecond early. Rounding to the microsecond and adding half of one makes the truncation land
 * on the intended value (a manifest's mtimeMs is good to about 0.25 µs). Times before 1970 cannot
 * be restored: Node sets a negative time to "now".
 */
function utimesSeconds(mtimeMs: number): number {
  return (Math.round(mtimeMs * 1000) + 0.5) / 1e6;
}

function depth(rel: string): number {
  return rel.split('/').length;
}

function lstatOrUndefined(p: string) {
  try {
    return lstatSync(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** syncfs(2) of the file system holding `dir` (coreutils `sync -f`); plain sync(1) if unavailable. */
async function syncFileSystem(dir: string): Promise<void> {
  try {
    await execFileAsync('sync', ['-f', dir]);
  } catch {
    await execFileAsync('sync', []);
  }
}

function quietly(step: () => void): void {
  try {
    step();
  } catch {
    // cleanup after a failure: the first error is the one that matters
  }
}
