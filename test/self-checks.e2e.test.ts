import { randomBytes } from 'node:crypto';
import { open, readdir, rm, stat, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cutInMemory } from '../agent/backup/content-chunker.test-helpers.ts';
import { DEFAULT_BLOCK_SIZE } from '../protocol/version.ts';
import {
  activeAlerts,
  addDatasource,
  backup,
  fileHashes,
  MiB,
  recoveryPoints,
  restore,
  runJob,
} from './e2e-helpers.ts';
import { startAgent, startServer, type TestAgent, type TestServer, tempDir } from './harness.ts';

/*
 * The server checks itself: verify finds a block damaged on disk, raises an alert, and the
 * next backup heals it; a consistency check repairs a replica whose pack file was deleted
 * behind the server's back, moving only the blocks the server lost.
 */
describe('verify and consistency check', () => {
  let server: TestServer;
  let alpha: TestAgent;
  let work: string;
  let src: string;
  let datasourceId: string;
  /** Distinct blocks of the source tree (default block size). */
  let BLOCKS = 0;

  beforeAll(async () => {
    server = await startServer();
    alpha = await startAgent(server, 'alpha');
    work = await tempDir('self-checks');
    src = path.join(work, 'src');
    await mkdir(path.join(src, 'sub'), { recursive: true });
    // Random data: incompressible, so blocks are stored raw and one flipped byte shows.
    const files: [string, Buffer][] = [
      ['three.bin', randomBytes(3 * MiB)],
      ['sub/one-and-half.bin', randomBytes(MiB + MiB / 2)],
      ['small.txt', randomBytes(100)],
      ['sub/one.bin', randomBytes(MiB)],
    ];
    for (const [rel, data] of files) {
      await writeFile(path.join(src, rel), data);
      BLOCKS += cutInMemory(data, DEFAULT_BLOCK_SIZE.files).length;
    }
    datasourceId = await addDatasource(server, { agent: 'alpha', path: src });
  }, 120_000);

  afterAll(async () => {
    await alpha?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const packs = async () => {
    const root = path.join(server.dataDir, 'store', 'packs');
    const files: string[] = [];
    for (const dir of await readdir(root)) {
      if (!/^[0-9a-f]{2}$/.test(dir)) continue;
      for (const f of await readdir(path.join(root, dir)))
        if (f.endsWith('.pack')) files.push(path.join(root, dir, f));
    }
    return files;
  };

  it('finds a block corrupted on disk, raises an alert, and the next backup heals it', async () => {
    const first = await backup(server, datasourceId);
    expect(first.state, first.error ?? '').toBe('succeeded');
    expect(first.blocksSent).toBe(BLOCKS);

    const clean = await runJob(server, { type: 'verify' });
    expect(clean.state, clean.error ?? '').toBe('succeeded');
    expect(clean.result).toMatchObject({ corruptBlocks: [] });
    expect(await activeAlerts(server)).toEqual([]);

    // One byte flipped in the middle of the only pack: inside one block's raw payload.
    const [pack] = await packs();
    const fh = await open(pack!, 'r+');
    const middle = Math.floor((await fh.stat()).size / 2);
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, middle);
    byte[0] = byte[0]! ^ 0xff;
    await fh.write(byte, 0, 1, middle);
    await fh.close();

    const found = await runJob(server, { type: 'verify' });
    expect(found.state, found.error ?? '').toBe('succeeded');
    expect((found.result as { corruptBlocks: unknown[] }).corruptBlocks).toHaveLength(1);
    const alerts = await activeAlerts(server);
    expect(alerts).toContainEqual(
      expect.objectContaining({
        kind: 'verify-corruption',
        severity: 'critical',
        subject: `datasource:${datasourceId}`,
      }),
    );
    const [rp1] = await recoveryPoints(server, datasourceId);
    expect(rp1).toMatchObject({ id: first.rpId, status: 'corrupt' });

    // Not an incremental on a corrupt base: everything is re-read, and only the lost block moves.
    const healing = await backup(server, datasourceId);
    expect(healing.state, healing.error ?? '').toBe('succeeded');
    expect(healing.blocksSent).toBe(1);
    const target = path.join(work, 'restored-healed');
    const restored = await restore(server, healing.rpId!, target);
    expect(restored.state, restored.error ?? '').toBe('succeeded');
    expect(await fileHashes(target)).toEqual(await fileHashes(src));

    // Verified again: the old point is whole again (its block is back), and the alert clears.
    const again = await runJob(server, { type: 'verify' });
    expect((again.result as { corruptBlocks: unknown[] }).corruptBlocks).toEqual([]);
    const points = await recoveryPoints(server, datasourceId);
    expect(points.map((p) => p.status)).toEqual(['ok', 'ok']);
    expect((await activeAlerts(server)).filter((a) => a.kind === 'verify-corruption')).toEqual([]);
  }, 120_000);

  it('repairs a replica after a pack was deleted behind the server, moving only the lost blocks', async () => {
    // Two packs now: the first backup's (all blocks but the healed one) and the healing one.
    const all = await packs();
    expect(all).toHaveLength(2);
    const sizes = await Promise.all(all.map(async (p) => (await stat(p)).size));
    const biggest = all[sizes.indexOf(Math.max(...sizes))]!;
    await rm(biggest);

    const check = await runJob(server, { type: 'consistency-check', datasourceId });
    expect(check.state, check.error ?? '').toBe('succeeded');
    expect(check.blocksSent).toBe(BLOCKS - 1);
    const [newest] = await recoveryPoints(server, datasourceId);
    expect(newest).toMatchObject({ id: check.rpId, origin: 'consistency-check', status: 'ok' });

    const target = path.join(work, 'restored-repaired');
    const restored = await restore(server, check.rpId!, target);
    expect(restored.state, restored.error ?? '').toBe('succeeded');
    expect(await fileHashes(target)).toEqual(await fileHashes(src));
    expect((await activeAlerts(server)).filter((a) => a.kind === 'replica-inconsistent')).toEqual([]);
    const verify = await runJob(server, { type: 'verify', rpIds: [check.rpId!] });
    expect((verify.result as { corruptBlocks: unknown[] }).corruptBlocks).toEqual([]);
  }, 120_000);
});
