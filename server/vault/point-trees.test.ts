import { describe, expect, it } from 'vitest';
import type { Entry } from '../../protocol/entry.ts';
import type { EncodedTree } from './format/tree.ts';
import { compareWalkOrder, treesOfEntries, WalkOrderTrees } from './point-trees.ts';

const TIME = new Date(Date.UTC(2024, 5, 1, 12));
const ID = (n: number) => n.toString(16).padStart(64, '0');

/** A manifest in walk order, as the agent's scanner makes it (folders, files, symlinks, no root entry). */
function walkManifest(seed: number): { entry: Entry; content?: string[] }[] {
  let x = seed;
  const rnd = (n: number) => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x % n;
  };
  const names = ['a', 'a-b', 'a.b', 'b', 'B', 'é', 'z', 'Z9', '𝄞', '\uffee', 'ab', 'a b'];
  const out: { entry: Entry; content?: string[] }[] = [];
  const walk = (dir: string, depth: number) => {
    const picked = [...new Set(Array.from({ length: 1 + rnd(6) }, () => names[rnd(names.length)]!))];
    picked.sort((p, q) => Buffer.compare(Buffer.from(p), Buffer.from(q)));
    for (const name of picked) {
      const p = dir === '' ? name : `${dir}/${name}`;
      const meta = { path: p, mode: 0o640 + rnd(8), uid: rnd(3), gid: rnd(3), mtimeMs: 1.7e12 + rnd(1e6) };
      const kind = depth < 4 ? rnd(4) : 1 + rnd(3);
      if (kind === 0) {
        out.push({ entry: { type: 'dir', ...meta } });
        walk(p, depth + 1);
      } else if (kind === 3) {
        out.push({ entry: { type: 'symlink', ...meta, target: `../${name}` } });
      } else {
        const content = Array.from({ length: rnd(3) }, () => ID(rnd(50)));
        out.push({ entry: { type: 'file', ...meta, size: content.length * 100, hashes: [] }, content });
      }
    }
  };
  walk('', 0);
  return out;
}

function streamed(entries: { entry: Entry; content?: string[] }[]): {
  folder: EncodedTree;
  trees: EncodedTree[];
} {
  const trees: EncodedTree[] = [];
  const walk = new WalkOrderTrees(TIME, (t) => trees.push(t));
  for (const { entry, content } of entries) expect(walk.add(entry, content)).toBe(true);
  const folder = walk.finish();
  return { folder, trees };
}

const byId = (trees: EncodedTree[]) => new Map(trees.map((t) => [t.id, t.bytes.toString('hex')]));

describe('point trees', () => {
  it('walk order is the scanner order: components by UTF-8 bytes, a folder before its contents', () => {
    const paths = ['a', 'a/b', 'a/b/c', 'a b', 'a-b', 'a.b', 'aa', 'b', 'é', '\uffee', '𝄞', '𝄞/x'];
    const sorted = [...paths].sort(compareWalkOrder);
    expect(sorted).toEqual(paths);
    for (let i = 1; i < paths.length; i++) {
      expect(compareWalkOrder(paths[i - 1]!, paths[i]!)).toBeLessThan(0);
      expect(compareWalkOrder(paths[i]!, paths[i - 1]!)).toBeGreaterThan(0);
    }
    expect(compareWalkOrder('x/y', 'x/y')).toBe(0);
  });

  it('streamed trees are byte for byte those built from the whole manifest', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const entries = walkManifest(seed);
      const whole = treesOfEntries(entries, TIME);
      const s = streamed(entries);
      expect(s.folder.id).toBe(whole.folderTree.id);
      expect(byId(s.trees)).toEqual(byId(whole.trees));
    }
  });

  it('gives folders without an entry of their own the default metadata, as before', () => {
    const f = (p: string): { entry: Entry; content: string[] } => ({
      entry: { type: 'file', path: p, mode: 0o644, uid: 1, gid: 1, mtimeMs: 1.7e12, size: 1, hashes: [] },
      content: [ID(1)],
    });
    const entries = [f('x/y/1'), f('x/y/z/2'), f('x/z'), f('y')];
    const whole = treesOfEntries(entries, TIME);
    const s = streamed(entries);
    expect(s.folder.id).toBe(whole.folderTree.id);
    expect(byId(s.trees)).toEqual(byId(whole.trees));
    expect(s.trees).toHaveLength(4);
  });

  it('holds only the folders open on the way down', () => {
    const entries = walkManifest(7);
    const walk = new WalkOrderTrees(TIME, () => {});
    let deepest = 0;
    for (const { entry, content } of entries) {
      walk.add(entry, content);
      deepest = Math.max(deepest, walk.depth);
      expect(walk.depth).toBe(entry.path.split('/').length + (entry.type === 'dir' ? 1 : 0));
    }
    expect(deepest).toBeLessThanOrEqual(6);
  });

  it('refuses an entry out of walk order (or twice)', () => {
    const d = (p: string): Entry => ({ type: 'dir', path: p, mode: 0o755, uid: 0, gid: 0, mtimeMs: 1 });
    const walk = new WalkOrderTrees(TIME, () => {});
    expect(walk.add(d('a'))).toBe(true);
    expect(walk.add(d('a/b'))).toBe(true);
    expect(walk.add(d('a/b'))).toBe(false);
    expect(walk.add(d('a'))).toBe(false);
    expect(walk.add(d('a-c'))).toBe(true);
    expect(walk.add(d('a/c'))).toBe(false);
  });
});
