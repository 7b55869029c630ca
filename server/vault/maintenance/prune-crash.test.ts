import { cp } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend } from '../backends/local-backend.ts';
import { VaultRepository } from '../format/repository.ts';
import { restic, resticOk, tempDir } from '../format/restic-cli.test-helpers.ts';
import { type SpecNode, TestVaultWriter } from '../format/vault-writer.test-helpers.ts';
import {
  CrashingBackend,
  expectResticCheckOk,
  expectResticRestore,
  MiB,
  PASSPHRASE,
  rand,
} from './maintenance.test-helpers.ts';
import { pruneVault } from './prune.ts';
import { purge } from './soft-delete.ts';

/**
 * Crash safety: prune "dies" at each of its writes and deletes in turn. After every such crash
 * (and restic's `unlock --remove-all`, since a dead process leaves its lock) restic's check
 * --read-data must find no errors, and a second prune must finish the job.
 */

const FAST_KDF = { N: 1024, r: 8, p: 1 };
let work: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  work = await tempDir('holdfast-prune-crash-');
});
afterAll(async () => {
  await work.cleanup();
});

const dir = (children: Record<string, SpecNode>): SpecNode => ({ type: 'dir', children });
const file = (content: Buffer): SpecNode => ({ type: 'file', content });

describe('pruneVault crash safety', () => {
  it('restic check passes after a crash at every step, and a later prune completes', async () => {
    const template = path.join(work.dir, 'template');
    const repo = await VaultRepository.init(new LocalBackend(template), PASSPHRASE, { kdf: FAST_KDF });
    const writer = new TestVaultWriter(repo);
    const keep = rand(MiB + 5000); // 2 blocks
    const base = { absPath: '/d', hostname: 'h', group: 'g', datasourceId: 'ds' };
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      ids.push(
        await writer.writeSnapshot({
          ...base,
          top: dir({ keep: file(keep), [`only-${i}`]: file(rand(300_000)) }),
          recoveryPointId: `rp-${i}`,
          timeMs: Date.UTC(2024, 0, 1 + i),
        }),
      );
    }
    // rp-0 and rp-1 go: rp-0's data pack is repacked (keep's blocks), rp-1's deleted entirely
    await purge(repo, ids.slice(0, 2));

    // count the writes and deletes of one complete prune
    const countDir = path.join(work.dir, 'count');
    await cp(template, countDir, { recursive: true });
    const counter = new CrashingBackend(new LocalBackend(countDir), Number.POSITIVE_INFINITY);
    const full = await pruneVault(await VaultRepository.open(counter, PASSPHRASE), { lockRecheckDelayMs: 1 });
    expect(full.packsRewritten).toBe(1);
    expect(full.packsDeleted).toBeGreaterThanOrEqual(3);
    // lock, new pack, new index, 3 old index files, >= 4 packs, unlock
    const steps = counter.mutations;
    expect(steps).toBeGreaterThanOrEqual(11);
    await expectResticCheckOk(countDir);

    for (let crashAt = 1; crashAt <= steps; crashAt++) {
      const repoDir = path.join(work.dir, `crash-${crashAt}`);
      await cp(template, repoDir, { recursive: true });
      const crashing = new CrashingBackend(new LocalBackend(repoDir), crashAt);
      const crashed = await pruneVault(await VaultRepository.open(crashing, PASSPHRASE), {
        lockRecheckDelayMs: 1,
      }).then(
        () => false,
        () => true,
      );
      // the last step is releasing the lock: prune's work was done, the release "crashed"
      expect(crashed, `crash at ${crashAt}`).toBe(true);
      await resticOk(repoDir, PASSPHRASE, ['unlock', '--remove-all']);
      const check = await restic(repoDir, PASSPHRASE, ['check', '--read-data']);
      expect(check.code, `crash at step ${crashAt}: ${check.stdout}\n${check.stderr}`).toBe(0);
      expect(check.stdout).toContain('no errors were found');

      // the next prune finishes; nothing is left over
      const repo2 = await VaultRepository.open(new LocalBackend(repoDir), PASSPHRASE);
      const again = await pruneVault(repo2, { lockRecheckDelayMs: 1 });
      expect(again.packsRewritten + again.packsDeleted + again.unreferencedPacksDeleted).toBeLessThanOrEqual(
        full.packsRewritten + full.packsDeleted + 1,
      );
      const final = await expectResticCheckOk(repoDir);
      expect(final, `crash at ${crashAt}`).not.toContain('additional files');
      if (crashAt === Math.ceil(steps / 2)) {
        await expectResticRestore(repoDir, ids[2]!, path.join(work.dir, `restore-${crashAt}`), {
          'd/keep': keep,
        });
      }
    }
  });
});
