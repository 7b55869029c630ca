import { randomBytes } from 'node:crypto';
import { open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';

/**
 * Filesystem steps shared by every durable write (chunk packs, manifests, state files). Both follow one recipe
 * (restic's and PBS's): write a temp file in a tmp/ folder on the same filesystem, fsync it,
 * rename it into place, and fsync the folder that gained the name. A rename is atomic, so a
 * reader sees the old state or the complete new file, never a torn one.
 */

/** fsync a directory, so names created or removed in it survive a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * A temp name nobody else will pick: two writers of the same chunk (two requests, or two
 * processes) each get their own file, and the last rename wins with identical content.
 */
export function tempName(stem: string): string {
  return `${stem}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
}

/**
 * Removes the files of a tmp folder left by a crash: they can never be renamed into place.
 * Called at open. Only files untouched for `olderThanMs` go: another server process sharing
 * the data folder may be writing the recent ones right now.
 */
export async function clearTempDir(dir: string, olderThanMs = 3_600_000): Promise<number> {
  let removed = 0;
  const cutoff = Date.now() - olderThanMs;
  for (const name of await readdir(dir)) {
    const file = path.join(dir, name);
    const st = await stat(file).catch(() => undefined);
    if (!st || st.mtimeMs > cutoff) continue;
    await rm(file, { force: true, recursive: true });
    removed += 1;
  }
  return removed;
}

/** Best-effort cleanup of a temp file after a failed write; the original error matters more. */
export async function removeQuietly(file: string): Promise<void> {
  await rm(file, { force: true }).catch(() => {});
}

export function errnoCode(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | null)?.code;
}

/** Out of space (or quota): permanent until an administrator acts, so never retried. */
export function isDiskFull(err: unknown): boolean {
  const code = errnoCode(err);
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/** Write a small file crash-safely: temp file beside the target, fsync, rename, fsync the folder. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode = 0o600): Promise<void> {
  const tmp = path.join(path.dirname(file), tempName(`.${path.basename(file)}`));
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(data);
      await fh.chmod(mode);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, file);
  } catch (err) {
    await removeQuietly(tmp);
    throw err;
  }
  await fsyncDir(path.dirname(file));
}
