import { copyFile, open, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addDatasource,
  backup,
  fileHashes,
  MiB,
  restore,
  newBlockBytes,
  writeDistinctBigFile,
  writeDistinctFiles,
} from './e2e-helpers.ts';
import { loadChecksumCache } from '../agent/backup/checksum-cache.ts';
import { blockLayout } from '../agent/backup/content-chunker.ts';
import { DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE } from '../protocol/version.ts';
import { startAgent, startServer, type TestAgent, type TestServer, tempDir, waitFor } from './harness.ts';
import { randomBytes } from 'node:crypto';

/*
 * The agent's checksum cache is an optimisation only. Lost, the next backup reads every file
 * again but sends nothing the server already holds for this agent; stale (the cache of an
 * older recovery point put back), it is ignored, and the backup is still right.
 */
describe('lost or stale agent checksum cache', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  let src: string;
  let datasourceId: string;
  let total: number;
  const cacheDir = () => path.join(agent.stateDir, 'cache');
  const cacheFile = () => path.join(cacheDir(), `${datasourceId}.cache`);
  /** The agent saves its cache when told the recovery point exists, just after the job ended. */
  const cacheSavedFor = (rpId: string) =>
    waitFor(
      `checksum cache of ${rpId}`,
      () =>
        loadChecksumCache(
          agent.stateDir,
          datasourceId,
          rpId,
          blockLayout('files', DEFAULT_BLOCK_SIZE.files, MAX_BLOCK_SIZE),
        ),
      10_000,
    );

  beforeAll(async () => {
    server = await startServer();
    agent = await startAgent(server, 'cachey');
    work = await tempDir('cache');
    src = path.join(work, 'src');
    total = await writeDistinctFiles(path.join(src, 'small'), 12, 'cache');
    total += await writeDistinctBigFile(path.join(src, 'big.bin'), 8, 'cache-big');
    datasourceId = await addDatasource(server, { agent: 'cachey', path: src });
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const sizeOfTree = async () => {
    let n = 0;
    for (const rel of (await fileHashes(src)).keys()) n += (await stat(path.join(src, rel))).size;
    return n;
  };

  it('first backup reads and sends everything and leaves a cache', async () => {
    const job = await backup(server, datasourceId);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.bytesScanned).toBe(total);
    expect(job.bytesSent).toBe(total);
    await cacheSavedFor(job.rpId!);
    // With the cache, nothing is read again.
    const again = await backup(server, datasourceId);
    expect(again.state).toBe('succeeded');
    expect(again.bytesScanned).toBe(0);
    expect(again.bytesSent).toBe(0);
    await cacheSavedFor(again.rpId!);
  });

  it('with the cache folder deleted, reads everything again but sends nothing', async () => {
    await rm(cacheDir(), { recursive: true, force: true });
    const expected = await fileHashes(src);
    const job = await backup(server, datasourceId);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.bytesScanned).toBe(total);
    expect(job.bytesSent).toBe(0);
    const target = path.join(work, 'restore-lost');
    const restored = await restore(server, job.rpId!, target);
    expect(restored, restored.error ?? '').toMatchObject({ state: 'succeeded' });
    expect(await fileHashes(target)).toEqual(expected);
    // The cache is written again after the backup.
    await cacheSavedFor(job.rpId!);
  });

  it('a stale cache (of an older recovery point) is ignored and the backup is right', async () => {
    const saved = path.join(work, 'rp1.cache');
    await copyFile(cacheFile(), saved);

    // RP2: change 4 KiB of big.bin in place (one block or two of it) and one small file.
    const bigBefore = await readFile(path.join(src, 'big.bin'));
    const smallBefore = await readFile(path.join(src, 'small/f-0003.bin'));
    let fh = await open(path.join(src, 'big.bin'), 'r+');
    await fh.write(randomBytes(4096), 0, 4096, 3 * MiB + 100);
    await fh.close();
    fh = await open(path.join(src, 'small/f-0003.bin'), 'r+');
    await fh.write(randomBytes(16), 0, 16, 1000);
    await fh.close();
    const rp2 = await backup(server, datasourceId);
    expect(rp2, rp2.error ?? '').toMatchObject({ state: 'succeeded' });
    expect(rp2.bytesScanned).toBe(9 * MiB);
    const bigChanged = newBlockBytes(bigBefore, await readFile(path.join(src, 'big.bin')));
    expect(bigChanged).toBeGreaterThan(0);
    expect(bigChanged).toBeLessThanOrEqual(2 * MAX_BLOCK_SIZE);
    const smallChanged = newBlockBytes(smallBefore, await readFile(path.join(src, 'small/f-0003.bin')));
    expect(smallChanged).toBeGreaterThan(0);
    expect(smallChanged).toBeLessThan(MiB);
    expect(rp2.bytesSent).toBe(smallChanged + bigChanged);
    await cacheSavedFor(rp2.rpId!);

    // Put the RP1 cache back, then change another file.
    await copyFile(saved, cacheFile());
    const otherBefore = await readFile(path.join(src, 'small/f-0007.bin'));
    fh = await open(path.join(src, 'small/f-0007.bin'), 'r+');
    await fh.write(randomBytes(16), 0, 16, 5000);
    await fh.close();
    const expected = await fileHashes(src);
    expect(await sizeOfTree()).toBe(total);

    const job = await backup(server, datasourceId);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.bytesScanned).toBe(total);
    expect(job.bytesSent).toBe(
      newBlockBytes(otherBefore, await readFile(path.join(src, 'small/f-0007.bin'))),
    );
    const target = path.join(work, 'restore-stale');
    const restored = await restore(server, job.rpId!, target);
    expect(restored, restored.error ?? '').toMatchObject({ state: 'succeeded' });
    expect(await fileHashes(target)).toEqual(expected);
  });
});
