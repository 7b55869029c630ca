import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import path from 'node:path';

export interface TreeItem {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  mtimeMs: number;
  sha256?: string;
  target?: string;
}

/** What a backup must preserve of a folder: types, permission bits, mtimes, contents, link targets. */
export async function describeTree(root: string): Promise<Record<string, TreeItem>> {
  const out: Record<string, TreeItem> = {};
  const walk = async (rel: string) => {
    for (const name of (await readdir(path.join(root, rel))).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      const abs = path.join(root, r);
      const st = await lstat(abs);
      const base = { mode: st.mode & 0o7777, mtimeMs: Math.floor(st.mtimeMs) };
      if (st.isSymbolicLink()) out[r] = { type: 'symlink', ...base, mode: 0, target: await readlink(abs) };
      else if (st.isDirectory()) {
        await walk(r);
        out[r] = { type: 'dir', ...base };
      } else
        out[r] = {
          type: 'file',
          ...base,
          sha256: createHash('sha256')
            .update(await readFile(abs))
            .digest('hex'),
        };
    }
  };
  await walk('');
  return out;
}
