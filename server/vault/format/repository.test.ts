import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalBackend } from '../backends/local-backend.ts';
import { sha256Hex } from './id.ts';
import type { KdfParams } from './keys.ts';
import { VaultRepository } from './repository.ts';
import { tempDir } from './restic-cli.test-helpers.ts';
import { newSnapshot } from './snapshot.ts';
import { encodeTree, fileNode } from './tree.ts';

const FAST: KdfParams = { N: 1024, r: 8, p: 1 };
const PASS = 'repository test passphrase';
let dir: { dir: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  dir = await tempDir('holdfast-repo-');
});
afterEach(async () => {
  await dir.cleanup();
});

describe('VaultRepository', () => {
  it('init, then open with the passphrase; refuses a second init and a folder that is no vault', async () => {
    const backend = new LocalBackend(dir.dir);
    await expect(VaultRepository.open(backend, PASS)).rejects.toThrow(/holds no repository/);
    const created = await VaultRepository.init(backend, PASS, { kdf: FAST });
    await expect(VaultRepository.init(backend, PASS, { kdf: FAST })).rejects.toThrow(
      /already holds a repository/,
    );
    const opened = await VaultRepository.open(backend, PASS);
    expect(opened.config).toEqual(created.config);
    expect(opened.keyId).toBe(created.keyId);
    await expect(VaultRepository.open(backend, 'wrong passphrase, long enough')).rejects.toThrow(
      'wrong vault passphrase (no key in keys/ opens with it)',
    );
  });

  it('packs, indexes and reads back blobs; stores and lists snapshots in time order', async () => {
    const backend = new LocalBackend(dir.dir);
    const repo = await VaultRepository.init(backend, PASS, { kdf: FAST });
    const blocks = [Buffer.from('block one'), Buffer.alloc(100_000, 7)];
    const data = await repo.writePack(blocks.map((plaintext) => ({ type: 'data' as const, plaintext })));
    expect(await backend.stat(`data/${data.packId.slice(0, 2)}/${data.packId}`)).toEqual({ size: data.size });
    const tree = encodeTree([
      fileNode({
        name: 'f',
        mode: 0o644,
        mtime: 0,
        uid: 0,
        gid: 0,
        size: 100_009,
        content: blocks.map((b) => sha256Hex(b)),
      }),
    ]);
    const trees = await repo.writePack([{ type: 'tree', plaintext: tree.bytes }]);
    await expect(
      repo.writePack([
        { type: 'data', plaintext: Buffer.from('x') },
        { type: 'tree', plaintext: Buffer.from('{}') },
      ]),
    ).rejects.toThrow(/not both/);
    const indexIds = await repo.saveIndex([
      { id: data.packId, blobs: data.entries },
      { id: trees.packId, blobs: trees.entries },
    ]);
    expect(indexIds).toHaveLength(1);
    const later = await repo.saveSnapshot(
      newSnapshot({ time: 2000, tree: tree.id, paths: ['/x'], hostname: 'h' }),
    );
    const earlier = await repo.saveSnapshot(
      newSnapshot({ time: 1000, tree: tree.id, paths: ['/x'], hostname: 'h' }),
    );

    const fresh = await VaultRepository.open(backend, PASS);
    expect((await fresh.listSnapshots()).map((s) => s.id)).toEqual([earlier, later]);
    const index = await fresh.loadIndex();
    expect(index.data.size).toBe(2);
    expect(index.get('tree', tree.id)?.packId).toBe(trees.packId);
    const [node] = await fresh.loadTree(tree.id);
    const content = await Promise.all(node!.content!.map((id) => fresh.readBlob('data', id)));
    expect(Buffer.concat(content).equals(Buffer.concat(blocks))).toBe(true);
    await expect(fresh.readBlob('data', 'c'.repeat(64))).rejects.toThrow(/not in any index/);
  });

  it('a second passphrase opens the same repository', async () => {
    const backend = new LocalBackend(dir.dir);
    const repo = await VaultRepository.init(backend, PASS, { kdf: FAST });
    await repo.addPassphrase('second passphrase here', { kdf: FAST });
    const other = await VaultRepository.open(backend, 'second passphrase here');
    expect(other.key.encrypt.equals(repo.key.encrypt)).toBe(true);
  });
});
