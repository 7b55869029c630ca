import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';

/**
 * Total size of the regular files under `root`, for progress and ETA. A quick stat-only walk
 * (a fraction of the backup's own walk); errors are ignored here, the backup reports them.
 */
export async function measureTree(root: string): Promise<number> {
  let total = 0;
  const walk = async (dir: string): Promise<void> => {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch {
      return;
    }
    for (const name of names) {
      const abs = path.join(dir, name);
      const st = await lstat(abs).catch(() => undefined);
      if (!st) continue;
      if (st.isDirectory()) await walk(abs);
      else if (st.isFile()) total += st.size;
    }
  };
  await walk(root);
  return total;
}
