import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, open, readdir, readlink, stat } from 'node:fs/promises';
import path from 'node:path';
import { MiB } from './measure.ts';
import { type DataKind, sourcePath, type ToolContext } from './tool.ts';

/** Restore verification: SHA-256 of every file of the restored tree or image against the source. */

/** path -> "file:<sha256>" / "dir" / "symlink:<target>", relative to root, streaming 1 MiB reads. */
export async function hashTree(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const buf = Buffer.allocUnsafe(MiB);
  const walk = async (rel: string): Promise<void> => {
    for (const name of (await readdir(path.join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const abs = path.join(root, r);
      const st = await lstat(abs);
      if (st.isSymbolicLink()) out.set(r, `symlink:${await readlink(abs)}`);
      else if (st.isDirectory()) {
        out.set(r, 'dir');
        await walk(r);
      } else if (st.isFile()) out.set(r, `file:${await hashFile(abs, buf)}`);
      else out.set(r, 'special');
    }
  };
  await walk('');
  return out;
}

export async function hashFile(file: string, buf = Buffer.allocUnsafe(MiB)): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(file, 'r');
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** Differences between two hashed trees, at most `limit` described. */
export function diffTrees(expected: Map<string, string>, actual: Map<string, string>, limit = 10): string[] {
  const problems: string[] = [];
  for (const [p, v] of expected) {
    const got = actual.get(p);
    if (got === undefined) problems.push(`missing: ${p}`);
    else if (got !== v) problems.push(`differs: ${p} (expected ${v.slice(0, 20)}, got ${got.slice(0, 20)})`);
  }
  for (const p of actual.keys()) if (!expected.has(p)) problems.push(`unexpected: ${p}`);
  if (problems.length > limit) return [...problems.slice(0, limit), `... ${problems.length - limit} more`];
  return problems;
}

/** The restored image: where the tool said, else the only regular file under the target. */
async function locateImage(hint: string, target: string): Promise<string> {
  if (existsSync(hint) && (await stat(hint)).isFile()) return hint;
  if ((await stat(target)).isFile()) return target;
  const files = (await readdir(target, { recursive: true, withFileTypes: true })).filter((e) => e.isFile());
  const only = files[0];
  if (files.length !== 1 || !only)
    throw new Error(`cannot find the restored image under ${target} (${files.length} files)`);
  return path.join(only.parentPath, only.name);
}

export async function verify(
  ctx: ToolContext,
  kind: DataKind,
  restored: string,
  target: string,
): Promise<void> {
  if (kind === 'image') {
    const file = await locateImage(restored, target);
    const [want, got] = await Promise.all([hashFile(sourcePath(ctx, kind)), hashFile(file)]);
    if (want !== got) throw new Error(`RESTORE MISMATCH: ${file} sha256 ${got} != source ${want}`);
    return;
  }
  const [want, got] = await Promise.all([hashTree(sourcePath(ctx, kind)), hashTree(restored)]);
  const problems = diffTrees(want, got);
  if (problems.length > 0) throw new Error(`RESTORE MISMATCH in ${restored}:\n  ${problems.join('\n  ')}`);
}
