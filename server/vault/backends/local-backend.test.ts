import { readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../format/restic-cli.test-helpers.ts';
import { isValidVaultPath, packPath, VaultNotFoundError } from './backend.ts';
import { LocalBackend } from './local-backend.ts';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
let dir: { dir: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  dir = await tempDir('holdfast-local-backend-');
});
afterEach(async () => {
  await dir.cleanup();
});

async function listAll(b: LocalBackend, folder: 'data' | 'keys' | 'locks' | 'index' | 'snapshots') {
  const out: { path: string; size: number }[] = [];
  for await (const f of b.list(folder)) out.push(f);
  return out.sort((x, y) => x.path.localeCompare(y.path));
}

describe('LocalBackend', () => {
  it("saves, loads, ranges, stats, lists and removes in restic's layout", async () => {
    const b = new LocalBackend(dir.dir);
    expect(b.name).toBe(`local:${dir.dir}`);
    await b.save(packPath(A), Buffer.from('0123456789'));
    await b.save(`index/${B}`, Buffer.from('idx'));
    expect((await stat(path.join(dir.dir, 'data', 'aa', A))).size).toBe(10);
    expect((await b.load(packPath(A))).toString()).toBe('0123456789');
    expect((await b.load(packPath(A), { offset: 3, length: 4 })).toString()).toBe('3456');
    expect(await b.stat(packPath(A))).toEqual({ size: 10 });
    expect(await b.stat(packPath(B))).toBeUndefined();
    expect(await listAll(b, 'data')).toEqual([{ path: packPath(A), size: 10 }]);
    expect(await listAll(b, 'index')).toEqual([{ path: `index/${B}`, size: 3 }]);
    expect(await listAll(b, 'snapshots')).toEqual([]);
    await b.remove(packPath(A));
    await b.remove(packPath(A)); // removing what is gone is fine
    expect(await listAll(b, 'data')).toEqual([]);
  });

  it('writes files 0600 and leaves no temp files; replaces on re-save', async () => {
    const b = new LocalBackend(dir.dir);
    await b.save(`keys/${A}`, Buffer.from('one'));
    await b.save(`keys/${A}`, Buffer.from('two!'));
    expect((await stat(path.join(dir.dir, 'keys', A))).mode & 0o777).toBe(0o600);
    expect(await readdir(path.join(dir.dir, 'keys'))).toEqual([A]);
    expect((await b.load(`keys/${A}`)).toString()).toBe('two!');
  });

  it('creates the full restic layout when the config is saved', async () => {
    const b = new LocalBackend(path.join(dir.dir, 'repo'));
    await b.save('config', Buffer.from('c'));
    const top = (await readdir(path.join(dir.dir, 'repo'))).sort();
    expect(top).toEqual(['config', 'data', 'index', 'keys', 'locks', 'snapshots']);
    expect(await readdir(path.join(dir.dir, 'repo', 'data'))).toHaveLength(256);
    expect((await stat(path.join(dir.dir, 'repo', 'data'))).mode & 0o777).toBe(0o700);
  });

  it('does not list foreign or temp files', async () => {
    const b = new LocalBackend(dir.dir);
    await b.save(`locks/${A}`, Buffer.from('x'));
    await writeFile(path.join(dir.dir, 'locks', `.${A}.123.abc.tmp`), 'partial');
    await writeFile(path.join(dir.dir, 'locks', 'README'), 'hi');
    expect((await listAll(b, 'locks')).map((f) => f.path)).toEqual([`locks/${A}`]);
  });

  it('reports a missing file as VaultNotFoundError and a short range as an error', async () => {
    const b = new LocalBackend(dir.dir);
    await expect(b.load(`snapshots/${A}`)).rejects.toBeInstanceOf(VaultNotFoundError);
    await expect(b.load(`snapshots/${A}`)).rejects.toMatchObject({
      code: 'VAULT_NOT_FOUND',
      path: `snapshots/${A}`,
    });
    await b.save(`snapshots/${A}`, Buffer.from('abc'));
    await expect(b.load(`snapshots/${A}`, { offset: 2, length: 5 })).rejects.toThrow(/too short/);
  });

  it('refuses any path outside the layout', async () => {
    const b = new LocalBackend(dir.dir);
    for (const bad of [
      '../x',
      `/etc/${A}`,
      `data/${A}`,
      `data/bb/${A}`,
      `keys/${A}/..`,
      'tmp/x',
      `keys/${A.toUpperCase()}`,
    ]) {
      expect(isValidVaultPath(bad), bad).toBe(false);
      await expect(b.save(bad, Buffer.from('x'))).rejects.toThrow(/not a vault path/);
    }
    expect(isValidVaultPath('config')).toBe(true);
  });
});
