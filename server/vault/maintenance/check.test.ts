import { open } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packPath } from '../backends/backend.ts';
import { LocalBackend } from '../backends/local-backend.ts';
import { sha256Hex } from '../format/id.ts';
import { VaultRepository } from '../format/repository.ts';
import { restic, tempDir } from '../format/restic-cli.test-helpers.ts';
import { type SpecNode, TestVaultWriter } from '../format/vault-writer.test-helpers.ts';
import { checkVault } from './check.ts';
import { expectResticCheckOk, MiB, PASSPHRASE, rand } from './maintenance.test-helpers.ts';
import { softDelete } from './soft-delete.ts';

const FAST_KDF = { N: 1024, r: 8, p: 1 };
let work: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  work = await tempDir('holdfast-check-');
});
afterAll(async () => {
  await work.cleanup();
});

const dir = (children: Record<string, SpecNode>): SpecNode => ({ type: 'dir', children });
const file = (content: Buffer): SpecNode => ({ type: 'file', content });

/** Three recovery points: rp-1 and rp-2 share file a's blocks (in rp-1's data pack); rp-3 shares nothing. */
async function vault(name: string) {
  const repoDir = path.join(work.dir, name);
  const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE, { kdf: FAST_KDF });
  const writer = new TestVaultWriter(repo);
  const a = rand(MiB + 10_000);
  const b = rand(50_000);
  const x = rand(2000);
  const base = { hostname: 'h', group: 'g' };
  const s1 = await writer.writeSnapshot({
    ...base,
    absPath: '/d',
    datasourceId: 'ds-1',
    recoveryPointId: 'rp-1',
    timeMs: Date.UTC(2024, 0, 1),
    top: dir({ a: file(a), b: file(b) }),
  });
  const s2 = await writer.writeSnapshot({
    ...base,
    absPath: '/d',
    datasourceId: 'ds-1',
    recoveryPointId: 'rp-2',
    timeMs: Date.UTC(2024, 0, 2),
    top: dir({ a: file(a), c: file(rand(1000)) }),
  });
  const s3 = await writer.writeSnapshot({
    ...base,
    absPath: '/e',
    datasourceId: 'ds-2',
    recoveryPointId: 'rp-3',
    timeMs: Date.UTC(2024, 0, 3),
    top: dir({ x: file(x) }),
  });
  const index = await repo.loadIndex();
  return { repoDir, repo, s1, s2, s3, a, b, x, index };
}

async function flipByte(filePath: string, offset: number): Promise<void> {
  const fh = await open(filePath, 'r+');
  try {
    const buf = Buffer.alloc(1);
    await fh.read(buf, 0, 1, offset);
    buf[0] = buf[0]! ^ 0x40;
    await fh.write(buf, 0, 1, offset);
  } finally {
    await fh.close();
  }
}

const rps = (list: { recoveryPointId?: string }[]) => list.map((s) => s.recoveryPointId).sort();

describe('checkVault', () => {
  it('finds nothing wrong in a sound vault (with a soft-deleted snapshot), as restic agrees', async () => {
    const v = await vault('sound');
    await softDelete(v.repo, [v.s3], new Date('2024-02-01T00:00:00Z'));
    const report = await checkVault(v.repo, { readData: true, lockRecheckDelayMs: 1 });
    expect(report.errors).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.warnings).toEqual([]);
    expect(report.stats).toMatchObject({ snapshots: 3, indexFiles: 3, packs: 6, packsRead: 6 });
    expect(report.stats.dataBlobsReferenced).toBe(5); // a (2 blocks), b, c, x
    await expectResticCheckOk(v.repoDir);
  });

  it('one corrupted byte in a data pack: reported with exactly the snapshots that use the damaged blob', async () => {
    const v = await vault('corrupt');
    const blockA = sha256Hex(v.a.subarray(0, MiB));
    const loc = v.index.get('data', blockA)!;
    const packFile = path.join(v.repoDir, ...packPath(loc.packId).split('/'));
    await flipByte(packFile, loc.offset + Math.floor(loc.length / 2));

    // restic agrees the vault is damaged
    const rc = await restic(v.repoDir, PASSPHRASE, ['check', '--read-data']);
    expect(rc.code).not.toBe(0);

    // the structure alone is intact (the damaged blob is data, not a tree)
    const structural = await checkVault(v.repo, { lockRecheckDelayMs: 1 });
    expect(structural.ok).toBe(true);
    expect(structural.stats.packsRead).toBe(0);

    const report = await checkVault(v.repo, { readData: true, lockRecheckDelayMs: 1 });
    expect(report.ok).toBe(false);
    expect(report.errors).toHaveLength(1);
    const e = report.errors[0]!;
    expect(e.kind).toBe('pack-damaged');
    expect(e.packId).toBe(loc.packId);
    expect(e.blobs).toEqual([{ type: 'data', id: blockA }]);
    expect(e.message).toMatch(/does not hash to its name/);
    expect(e.message).toMatch(/MAC mismatch/);
    expect(e.affectedSnapshots.map((s) => s.snapshotId).sort()).toEqual([v.s1, v.s2].sort());
    expect(rps(e.affectedSnapshots)).toEqual(['rp-1', 'rp-2']);
    expect(e.affectedSnapshots[0]).toMatchObject({
      datasourceId: 'ds-1',
      group: 'g',
      hostname: 'h',
      paths: ['/d'],
    });
    expect(rps(report.affectedSnapshots)).toEqual(['rp-1', 'rp-2']);
  });

  it('a blob used by one snapshot only affects that one', async () => {
    const v = await vault('corrupt-b');
    const loc = v.index.get('data', sha256Hex(v.b))!;
    await flipByte(path.join(v.repoDir, ...packPath(loc.packId).split('/')), loc.offset + 40);
    const report = await checkVault(v.repo, { readData: true, lockRecheckDelayMs: 1 });
    expect(report.errors.map((e) => e.kind)).toEqual(['pack-damaged']);
    expect(rps(report.affectedSnapshots)).toEqual(['rp-1']);
  });

  it('structure: a missing pack, a damaged tree and a pack no index names', async () => {
    const v = await vault('structure');
    // rp-3's data pack disappears
    const xPack = v.index.get('data', sha256Hex(v.x))!.packId;
    await v.repo.backend.remove(packPath(xPack));
    // rp-2's tree pack is damaged: a tree cannot be read even without readData
    const s2 = await v.repo.loadSnapshot(v.s2);
    const treeLoc = v.index.get('tree', s2.tree)!;
    await flipByte(path.join(v.repoDir, ...packPath(treeLoc.packId).split('/')), treeLoc.offset + 20);
    // and a leftover pack
    const orphan = await v.repo.writePack([{ type: 'data', plaintext: rand(100) }]);

    const report = await checkVault(v.repo, { lockRecheckDelayMs: 1 });
    expect(report.ok).toBe(false);
    const byKind = Object.fromEntries(report.errors.map((e) => [e.kind, e]));
    expect(Object.keys(byKind).sort()).toEqual(['pack-missing', 'tree-unreadable']);
    expect(byKind['pack-missing']!.packId).toBe(xPack);
    expect(rps(byKind['pack-missing']!.affectedSnapshots)).toEqual(['rp-3']);
    expect(byKind['tree-unreadable']!.blobs).toEqual([{ type: 'tree', id: s2.tree }]);
    expect(rps(byKind['tree-unreadable']!.affectedSnapshots)).toEqual(['rp-2']);
    expect(report.warnings).toEqual([`pack ${orphan.packId} is not named by any index (unused leftover)`]);
    expect(rps(report.affectedSnapshots)).toEqual(['rp-2', 'rp-3']);
  });
});
