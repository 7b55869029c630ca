import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packPath } from '../backends/backend.ts';
import { LocalBackend } from '../backends/local-backend.ts';
import { sha256Hex } from '../format/id.ts';
import { VaultRepository } from '../format/repository.ts';
import { resticOk, tempDir } from '../format/restic-cli.test-helpers.ts';
import { type SpecNode, TestVaultWriter } from '../format/vault-writer.test-helpers.ts';
import {
  expectResticCheckOk,
  expectResticRestore,
  MiB,
  PASSPHRASE,
  rand,
} from './maintenance.test-helpers.ts';
import { pruneVault } from './prune.ts';
import { purge, softDelete } from './soft-delete.ts';

/** Forget + prune against Debian's real restic: it must check and restore what prune leaves. */

const FAST_KDF = { N: 1024, r: 8, p: 1 };
let work: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  work = await tempDir('holdfast-prune-');
});
afterAll(async () => {
  await work.cleanup();
});

const dir = (children: Record<string, SpecNode>): SpecNode => ({ type: 'dir', children });
const file = (content: Buffer): SpecNode => ({ type: 'file', content });

async function listFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const top of ['data', 'index', 'snapshots']) {
    const entries = await readdir(path.join(root, top), { recursive: true, withFileTypes: true });
    for (const e of entries) if (e.isFile()) out.push(path.relative(root, path.join(e.parentPath, e.name)));
  }
  return out.sort();
}

describe('pruneVault', () => {
  it('after purge, deletes unused packs, repacks partly used ones; restic check --read-data passes and restores are byte-identical', async () => {
    const repoDir = path.join(work.dir, 'repo-main');
    const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE, { kdf: FAST_KDF });
    const writer = new TestVaultWriter(repo);
    const a = rand(3 * MiB); // 3 blocks, used by rp-1 and rp-2
    const b1 = rand(2 * MiB); // only rp-1
    const b2 = rand(2 * MiB); // only rp-2
    const x = rand(2 * MiB + 1000); // rp-3 and rp-4
    const y = Buffer.from('only in rp-4\n'.repeat(100));
    const t0 = Date.UTC(2024, 0, 1);
    const common = { absPath: '/srv/www', hostname: 'web1', group: 'web' };
    const s1 = await writer.writeSnapshot({
      ...common,
      top: dir({ 'a.bin': file(a), 'b.bin': file(b1), 'note.txt': file(Buffer.from('v1')) }),
      datasourceId: 'ds-1',
      recoveryPointId: 'rp-1',
      timeMs: t0,
    });
    const s2 = await writer.writeSnapshot({
      ...common,
      top: dir({ 'a.bin': file(a), 'b.bin': file(b2), 'note.txt': file(Buffer.from('v2')) }),
      datasourceId: 'ds-1',
      recoveryPointId: 'rp-2',
      timeMs: t0 + 86_400_000,
    });
    const s3 = await writer.writeSnapshot({
      ...common,
      absPath: '/dev/vdb',
      top: file(x),
      datasourceId: 'ds-2',
      recoveryPointId: 'rp-3',
      timeMs: t0,
    });
    const s4 = await writer.writeSnapshot({
      ...common,
      absPath: '/srv/other',
      top: dir({ 'x.bin': file(x), 'y.txt': file(y) }),
      datasourceId: 'ds-3',
      recoveryPointId: 'rp-4',
      timeMs: t0 + 2 * 86_400_000,
    });
    await expectResticCheckOk(repoDir);
    const before = await listFiles(repoDir);
    const indexBefore = await repo.loadIndex();
    const aBlock = sha256Hex(a.subarray(0, MiB));
    const packOfA = indexBefore.get('data', aBlock)!.packId;
    const packOfB1 = indexBefore.get('data', sha256Hex(b1.subarray(0, MiB)))!.packId;
    expect(packOfB1).toBe(packOfA); // rp-1's data pack holds a (3 blocks) and b1 (2 blocks)

    // forget rp-1 and rp-3 for good; soft-delete rp-4 (it must survive prune)
    await purge(repo, [s1, s3]);
    const { rewritten } = await softDelete(repo, [s4], new Date(t0 + 3 * 86_400_000));
    const s4deleted = rewritten[0]!.newId;

    // a dry run reports and changes nothing
    const dry = await pruneVault(repo, { dryRun: true, lockRecheckDelayMs: 10 });
    expect(dry).toMatchObject({ dryRun: true, packsRewritten: 1, newPacks: [] });
    expect(dry.packsDeleted).toBeGreaterThanOrEqual(2);
    const afterForget = await listFiles(repoDir);
    expect(afterForget.filter((f) => f.startsWith('data/'))).toEqual(
      before.filter((f) => f.startsWith('data/')),
    );

    const r = await pruneVault(repo, { maxUnusedFraction: 0.1, lockRecheckDelayMs: 10 });
    // rp-1's data pack (a + b1: 2 of 5 MiB unused) is repacked; rp-1's and rp-3's tree packs are
    // wholly unused; rp-3's data pack is still used by rp-4
    expect(r.packsRewritten).toBe(1);
    expect(r.packsDeleted).toBe(2);
    expect(r.packsDeleted).toBe(dry.packsDeleted);
    expect(r.unreferencedPacksDeleted).toBe(0);
    expect(r.blobsRepacked).toBe(3);
    expect(r.packsWritten).toBe(1);
    expect(r.removedPacks).toContain(packOfA);
    expect(r.bytesFreed).toBeGreaterThan(2 * MiB);
    expect(Math.abs(r.bytesFreed - dry.bytesFreed)).toBeLessThan(4096);
    for (const id of r.removedPacks) expect(await repo.backend.stat(packPath(id))).toBeUndefined();
    // the caller's mirror learns the new location of every repacked blob
    const newLoc = r.newPacks[0]!.blobs.find((e) => e.id === aBlock)!;
    const index = await repo.loadIndex();
    expect(index.get('data', aBlock)).toEqual({ ...newLoc, packId: r.newPacks[0]!.id });
    expect(index.packs.has(packOfA)).toBe(false);
    // blobs gone from the vault altogether: b1's two blocks, v1's note, rp-1's and rp-3's trees
    const removed = new Set(r.removedBlobs.map((b) => `${b.type}:${b.id}`));
    expect(removed.has(`data:${sha256Hex(b1.subarray(0, MiB))}`)).toBe(true);
    expect(removed.has(`data:${sha256Hex(b1.subarray(MiB))}`)).toBe(true);
    expect(removed.has(`data:${sha256Hex(Buffer.from('v1'))}`)).toBe(true);
    expect(removed.has(`data:${aBlock}`)).toBe(false);
    expect(r.removedBlobs.filter((b) => b.type === 'data')).toHaveLength(3);
    expect(r.removedBlobs.filter((b) => b.type === 'tree').length).toBeGreaterThan(0);
    for (const b of r.removedBlobs) expect(index.has(b.type, b.id)).toBe(false);
    // one index file supersedes all the old ones
    expect(r.newIndexes).toHaveLength(1);
    expect(r.supersededIndexes).toHaveLength(4);
    expect((await listFiles(repoDir)).filter((f) => f.startsWith('index/'))).toEqual([
      `index/${r.newIndexes[0]}`,
    ]);

    const check = await expectResticCheckOk(repoDir);
    expect(check).not.toContain('additional files');
    const snaps = JSON.parse(await resticOk(repoDir, PASSPHRASE, ['snapshots', '--json'])) as {
      id: string;
    }[];
    expect(snaps.map((s) => s.id).sort()).toEqual([s2, s4deleted].sort());
    await expectResticRestore(repoDir, s2, path.join(work.dir, 'restore-2'), {
      'srv/www/a.bin': a,
      'srv/www/b.bin': b2,
      'srv/www/note.txt': Buffer.from('v2'),
    });
    await expectResticRestore(repoDir, s4deleted, path.join(work.dir, 'restore-4'), {
      'srv/other/x.bin': x,
      'srv/other/y.txt': y,
    });

    // nothing left to do: a second prune changes nothing
    const again = await pruneVault(repo, { lockRecheckDelayMs: 10 });
    expect(again).toMatchObject({
      packsDeleted: 0,
      packsRewritten: 0,
      packsWritten: 0,
      newIndexes: [],
      removedPacks: [],
    });

    // purging the rest and pruning empties the vault's data, and restic still accepts it
    await purge(repo, [s2, s4deleted]);
    const last = await pruneVault(repo, { lockRecheckDelayMs: 10 });
    expect(last.packsWritten).toBe(0);
    expect((await listFiles(repoDir)).filter((f) => !f.startsWith('snapshots/'))).toEqual([]);
    await expectResticCheckOk(repoDir);
  });

  it('with maxUnusedFraction 1 keeps partly used packs as they are; with 0 repacks any pack with an unused blob', async () => {
    const repoDir = path.join(work.dir, 'repo-threshold');
    const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE, { kdf: FAST_KDF });
    const writer = new TestVaultWriter(repo);
    const big = rand(4 * MiB);
    const small = rand(200_000);
    const base = { absPath: '/d', hostname: 'h', group: 'g', datasourceId: 'ds' };
    const s1 = await writer.writeSnapshot({
      ...base,
      top: dir({ big: file(big), small: file(small) }),
      recoveryPointId: 'rp-1',
      timeMs: Date.UTC(2024, 0, 1),
    });
    const s2 = await writer.writeSnapshot({
      ...base,
      top: dir({ big: file(big) }),
      recoveryPointId: 'rp-2',
      timeMs: Date.UTC(2024, 0, 2),
    });
    await purge(repo, [s1]);
    // the data pack has ~4.2 MB of blobs, 0.2 MB (about 5%) unused
    const lax = await pruneVault(repo, { maxUnusedFraction: 1, lockRecheckDelayMs: 10 });
    expect(lax).toMatchObject({ packsRewritten: 0, packsDeleted: 1 }); // rp-1's tree pack
    expect(lax.unusedBytesKept).toBeGreaterThan(200_000);
    const mid = await pruneVault(repo, { maxUnusedFraction: 0.1, lockRecheckDelayMs: 10 });
    expect(mid).toMatchObject({ packsRewritten: 0, packsDeleted: 0 });
    const strict = await pruneVault(repo, { maxUnusedFraction: 0, lockRecheckDelayMs: 10 });
    expect(strict).toMatchObject({ packsRewritten: 1, packsDeleted: 0, blobsRemoved: 1, blobsRepacked: 4 });
    expect(strict.unusedBytesKept).toBe(0);
    await expectResticCheckOk(repoDir);
    await expectResticRestore(repoDir, s2, path.join(work.dir, 'restore-threshold'), { 'd/big': big });
  });

  it('deletes packs no index names, and refuses to prune when a snapshot needs a blob that is gone', async () => {
    const repoDir = path.join(work.dir, 'repo-refuse');
    const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE, { kdf: FAST_KDF });
    const writer = new TestVaultWriter(repo);
    const content = rand(1000);
    await writer.writeSnapshot({
      absPath: '/d',
      hostname: 'h',
      group: 'g',
      datasourceId: 'ds',
      recoveryPointId: 'rp-1',
      timeMs: Date.UTC(2024, 0, 1),
      top: dir({ f: file(content) }),
    });
    // an interrupted upload: a pack that no index names
    const orphan = await repo.writePack([{ type: 'data', plaintext: rand(5000) }]);
    const r = await pruneVault(repo, { lockRecheckDelayMs: 10 });
    expect(r).toMatchObject({ unreferencedPacksDeleted: 1, removedPacks: [orphan.packId], newIndexes: [] });
    expect(await repo.backend.stat(packPath(orphan.packId))).toBeUndefined();
    await expectResticCheckOk(repoDir);

    // lose the data pack: prune must stop before changing anything
    const index = await repo.loadIndex();
    const dataPack = index.get('data', sha256Hex(content))!.packId;
    await repo.backend.remove(packPath(dataPack));
    const filesBefore = await listFiles(repoDir);
    await expect(pruneVault(repo, { lockRecheckDelayMs: 10 })).rejects.toThrow(/prune stopped: 1 blob\(s\)/);
    expect(await listFiles(repoDir)).toEqual(filesBefore);
    expect(await readdir(path.join(repoDir, 'locks'))).toEqual([]); // the lock was released
  });
});
