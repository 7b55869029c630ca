import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend } from '../backends/local-backend.ts';
import { VaultRepository } from '../format/repository.ts';
import { resticOk, tempDir } from '../format/restic-cli.test-helpers.ts';
import { parseHoldfastTags } from '../format/snapshot.ts';
import { type SpecNode, TestVaultWriter } from '../format/vault-writer.test-helpers.ts';
import { planRetention } from './long-term-retention.ts';
import {
  CrashingBackend,
  expectResticCheckOk,
  expectResticRestore,
  PASSPHRASE,
  rand,
} from './maintenance.test-helpers.ts';
import { pruneVault } from './prune.ts';
import { expiredSoftDeletes, purge, softDelete, softDeletedAt, undelete } from './soft-delete.ts';

const FAST_KDF = { N: 1024, r: 8, p: 1 };
const DAY = 86_400_000;
let work: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  work = await tempDir('holdfast-soft-delete-');
});
afterAll(async () => {
  await work.cleanup();
});

const dir = (children: Record<string, SpecNode>): SpecNode => ({ type: 'dir', children });
const file = (content: Buffer): SpecNode => ({ type: 'file', content });

interface ResticSnap {
  id: string;
  tags?: string[];
  original?: string;
}
const resticSnapshots = async (repoDir: string) =>
  JSON.parse(await resticOk(repoDir, PASSPHRASE, ['snapshots', '--json'])) as ResticSnap[];

describe('soft delete, undelete, purge', () => {
  it('round trip: the state lives in the vault, restic checks and restores a soft-deleted snapshot', async () => {
    const repoDir = path.join(work.dir, 'repo');
    const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE, { kdf: FAST_KDF });
    const writer = new TestVaultWriter(repo);
    const content = rand(300_000);
    const base = { absPath: '/d', hostname: 'h', group: 'g', datasourceId: 'ds' };
    const s1 = await writer.writeSnapshot({
      ...base,
      top: dir({ f: file(content) }),
      recoveryPointId: 'rp-1',
      timeMs: Date.UTC(2024, 0, 1),
    });
    const s2 = await writer.writeSnapshot({
      ...base,
      top: dir({ g: file(rand(1000)) }),
      recoveryPointId: 'rp-2',
      timeMs: Date.UTC(2024, 0, 2),
    });
    const original = await repo.loadSnapshot(s1);

    const at = new Date('2024-02-01T10:00:00.000Z');
    const del = await softDelete(repo, [s1], at);
    expect(del.unchanged).toEqual([]);
    expect(del.rewritten).toHaveLength(1);
    const d1 = del.rewritten[0]!;
    expect(d1).toMatchObject({ oldId: s1, recoveryPointId: 'rp-1', datasourceId: 'ds' });
    expect(d1.newId).not.toBe(s1);
    // the old file is gone, the new one carries everything plus the tag (and restic's `original`)
    expect(await repo.backend.stat(`snapshots/${s1}`)).toBeUndefined();
    const deleted = await repo.loadSnapshot(d1.newId);
    expect(deleted).toEqual({
      ...original,
      original: s1,
      tags: [...original.tags!, 'holdfast-deleted:2024-02-01T10:00:00.000Z'],
    });
    expect(softDeletedAt(deleted.tags)).toEqual(at);

    // a disaster-recovery view (the vault alone) sees it deleted; retention leaves it out
    const listed = (await repo.listSnapshots()).map((s) => ({
      id: s.id,
      time: s.snapshot.time,
      tags: s.snapshot.tags,
    }));
    const plan = planRetention(listed, { daily: 7, weekly: 0, monthly: 0, yearly: 0 }, at);
    expect(plan.keep.map((k) => k.id)).toEqual([s2]);
    expect(plan.softDeleted.map((s) => [s.id, s.recoveryPointId, s.expired])).toEqual([
      [d1.newId, 'rp-1', false],
    ]);

    // restic sees the tag, checks and restores the soft-deleted snapshot
    const rs = await resticSnapshots(repoDir);
    expect(rs.find((s) => s.id === d1.newId)).toMatchObject({ original: s1 });
    expect(rs.find((s) => s.id === d1.newId)!.tags).toContain('holdfast-deleted:2024-02-01T10:00:00.000Z');
    await expectResticCheckOk(repoDir);
    await expectResticRestore(repoDir, d1.newId, path.join(work.dir, 'restore-deleted'), { 'd/f': content });

    // soft-deleting again keeps the first deletion time
    const twice = await softDelete(repo, [d1.newId], new Date('2024-02-05T00:00:00Z'));
    expect(twice).toEqual({ rewritten: [], unchanged: [d1.newId] });

    // expiry: exactly 14 days after the deletion
    const snaps = (await repo.listSnapshots()).map((s) => ({ id: s.id, tags: s.snapshot.tags }));
    expect(expiredSoftDeletes(snaps, new Date(at.getTime() + 14 * DAY - 1))).toEqual([]);
    const expired = expiredSoftDeletes(snaps, new Date(at.getTime() + 14 * DAY));
    expect(expired.map((e) => [e.id, e.deletedAt, e.purgeAfter])).toEqual([
      [d1.newId, at, new Date(at.getTime() + 14 * DAY)],
    ]);
    expect(expiredSoftDeletes(snaps, new Date(at.getTime() + 2 * DAY), 2 * DAY).map((e) => e.id)).toEqual([
      d1.newId,
    ]);

    // undelete: the tag goes, the recovery point is live again
    const und = await undelete(repo, [d1.newId, s2]);
    expect(und.unchanged).toEqual([s2]);
    const u1 = und.rewritten[0]!;
    expect(u1).toMatchObject({ oldId: d1.newId, recoveryPointId: 'rp-1' });
    const live = await repo.loadSnapshot(u1.newId);
    expect(live).toEqual({ ...original, original: s1 });
    expect(softDeletedAt(live.tags)).toBeUndefined();
    expect((await repo.listSnapshots()).map((s) => s.id).sort()).toEqual([u1.newId, s2].sort());

    // unknown ids: nothing is written
    await expect(softDelete(repo, [u1.newId, 'f'.repeat(64)], at)).rejects.toThrow(/no such snapshot/);
    expect(softDeletedAt((await repo.loadSnapshot(u1.newId)).tags)).toBeUndefined();

    // purge: gone for good, retried purge is fine, prune frees its data
    const pd = await softDelete(repo, [u1.newId], at);
    const gone = pd.rewritten[0]!.newId;
    const p = await purge(repo, [gone]);
    expect(p).toEqual({ removed: [{ id: gone, recoveryPointId: 'rp-1', datasourceId: 'ds' }], missing: [] });
    expect(await purge(repo, [gone])).toEqual({ removed: [], missing: [gone] });
    expect((await resticSnapshots(repoDir)).map((s) => s.id)).toEqual([s2]);
    const pr = await pruneVault(repo, { lockRecheckDelayMs: 10 });
    expect(pr.packsDeleted).toBe(2); // rp-1's data and tree packs
    await expectResticCheckOk(repoDir);
  });

  it('a crash between saving the new version and removing the old one is reconciled by a retry', async () => {
    const repoDir = path.join(work.dir, 'repo-crash');
    const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE, { kdf: FAST_KDF });
    const s1 = await new TestVaultWriter(repo).writeSnapshot({
      absPath: '/d',
      hostname: 'h',
      group: 'g',
      datasourceId: 'ds',
      recoveryPointId: 'rp-1',
      timeMs: Date.UTC(2024, 0, 1),
      top: dir({ f: file(rand(100)) }),
    });
    // mutations: 1 lock, 2 new snapshot, 3 remove old <- crash here
    const crashing = await VaultRepository.open(
      new CrashingBackend(new LocalBackend(repoDir), 3),
      PASSPHRASE,
    );
    const at = new Date('2024-03-01T00:00:00Z');
    await expect(softDelete(crashing, [s1], at)).rejects.toThrow(/simulated crash/);
    await resticOk(repoDir, PASSPHRASE, ['unlock', '--remove-all']);
    const both = await repo.listSnapshots();
    expect(both).toHaveLength(2);
    const twin = both.find((s) => s.id !== s1)!;
    expect(softDeletedAt(twin.snapshot.tags)).toEqual(at);

    const retry = await softDelete(repo, [s1], at);
    expect(retry.rewritten).toEqual([
      { oldId: s1, newId: twin.id, recoveryPointId: 'rp-1', datasourceId: 'ds' },
    ]);
    expect((await repo.listSnapshots()).map((s) => s.id)).toEqual([twin.id]);
    const tags = (await repo.loadSnapshot(twin.id)).tags;
    expect(parseHoldfastTags(tags)?.recoveryPointId).toBe('rp-1');
  });

  it('purge needs an exclusive lock when the caller passes its own', async () => {
    const repoDir = path.join(work.dir, 'repo-lock');
    const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE, { kdf: FAST_KDF });
    const shared = await repo.lock({ exclusive: false, recheckDelayMs: 1 });
    try {
      await expect(purge(repo, ['a'.repeat(64)], { lock: shared })).rejects.toThrow(/exclusive/);
      // and a purge that takes its own lock is refused while the shared one is held
      await expect(purge(repo, ['a'.repeat(64)])).rejects.toThrow(/already locked/);
    } finally {
      await shared.release();
    }
  });
});
