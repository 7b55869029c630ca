import { randomBytes, randomInt } from 'node:crypto';
import { open, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDatasource, backup, KiB, MiB, recoveryPoints, restore, sha256File } from './e2e-helpers.ts';
import { startAgent, startServer, type TestAgent, type TestServer, tempDir } from './harness.ts';

/*
 * Image datasources through real processes: a disk image read in 64 KiB blocks, where zero
 * blocks are neither sent nor stored and compressible blocks travel compressed; an incremental
 * reads the whole image again but sends only the blocks that changed; restores of both
 * recovery points to image files are byte-identical; a sparse image costs what it holds.
 */

const BLOCK = 64 * KiB;
const REGION = 4 * MiB;
/** 12 regions of 4 MiB, repeated twice: 5 zero (41.7 %), 4 random (33.3 %), 3 text (25 %). */
const PATTERN = [
  'zero',
  'random',
  'text',
  'zero',
  'random',
  'zero',
  'text',
  'random',
  'zero',
  'text',
  'random',
  'zero',
] as const;
const REGIONS = [...PATTERN, ...PATTERN];
const IMAGE_SIZE = REGIONS.length * REGION; // 96 MiB

function textRegion(region: number): Buffer {
  const lines: string[] = [];
  let bytes = 0;
  for (let i = 0; bytes < REGION; i++) {
    const line = `${String(region).padStart(2, '0')}:${String(i).padStart(7, '0')} holdfast image test, a log line that compresses well: status=ok, user=backup, path=/var/lib/data\n`;
    lines.push(line);
    bytes += line.length;
  }
  return Buffer.from(lines.join(''), 'latin1').subarray(0, REGION);
}

describe('image datasources', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  let image: string;
  let datasourceId: string;
  const rps: { id: string; sha256: string }[] = [];

  beforeAll(async () => {
    server = await startServer();
    agent = await startAgent(server, 'imager');
    work = await tempDir('image');
    image = path.join(work, 'disk.img');
    const fh = await open(image, 'w');
    try {
      for (const [i, kind] of REGIONS.entries()) {
        if (kind === 'zero') continue; // left as a hole: reads back as zeros
        const data = kind === 'random' ? randomBytes(REGION) : textRegion(i);
        await fh.write(data, 0, data.length, i * REGION);
      }
      await fh.truncate(IMAGE_SIZE);
    } finally {
      await fh.close();
    }
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  const count = (kind: (typeof PATTERN)[number]) => REGIONS.filter((k) => k === kind).length * REGION;

  it('full backup: zero blocks are not sent, text travels compressed', async () => {
    datasourceId = await addDatasource(server, {
      agent: 'imager',
      path: image,
      kind: 'image',
      blockSize: BLOCK,
    });
    const sha256 = await sha256File(image);
    const job = await backup(server, datasourceId);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null, files: 1 });
    expect(job.bytesScanned).toBe(IMAGE_SIZE);
    expect(count('zero') / IMAGE_SIZE).toBeGreaterThanOrEqual(0.4);
    // Every random block must cross the wire as it is; the text much smaller; no zero block.
    expect(job.bytesSent).toBeGreaterThanOrEqual(count('random'));
    expect(job.bytesSent).toBeLessThan(count('random') + count('text') / 4);
    expect(job.bytesSent).toBeLessThan(IMAGE_SIZE / 2);
    const [rp] = await recoveryPoints(server, datasourceId);
    expect(rp).toMatchObject({ id: job.rpId, kind: 'image', bytes: IMAGE_SIZE, files: 1 });
    // Zero blocks are null in the manifest: only the others count as blocks.
    expect(rp!.blocks).toBe((IMAGE_SIZE - count('zero')) / BLOCK);
    rps.push({ id: job.rpId!, sha256 });
  });

  it('incremental: reads the whole image, sends only the blocks that changed', async () => {
    const touched = new Set<number>();
    const fh = await open(image, 'r+');
    try {
      for (let i = 0; i < 60; i++) {
        const offset = randomInt(0, (IMAGE_SIZE - BLOCK) / (4 * KiB) + 1) * 4 * KiB;
        await fh.write(randomBytes(BLOCK), 0, BLOCK, offset);
        touched.add(Math.floor(offset / BLOCK));
        touched.add(Math.floor((offset + BLOCK - 1) / BLOCK));
      }
    } finally {
      await fh.close();
    }
    const sha256 = await sha256File(image);
    const job = await backup(server, datasourceId);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null, files: 1 });
    expect(job.bytesScanned).toBe(IMAGE_SIZE);
    expect(job.bytesSent).toBeGreaterThan(0);
    expect(job.bytesSent).toBeLessThanOrEqual(2 * touched.size * BLOCK);
    rps.push({ id: job.rpId!, sha256 });
    const list = await recoveryPoints(server, datasourceId);
    expect(list.map((r) => r.id)).toEqual([rps[1]!.id, rps[0]!.id]);
  });

  it('restores both recovery points to image files, byte-identical', async () => {
    for (const [i, rp] of rps.entries()) {
      const target = path.join(work, `restore-${i + 1}`, 'out.img');
      const job = await restore(server, rp.id, target);
      expect(job, job.error ?? '').toMatchObject({ type: 'restore', state: 'succeeded' });
      expect((await stat(target)).size).toBe(IMAGE_SIZE);
      expect(await sha256File(target)).toBe(rp.sha256);
      await rm(path.dirname(target), { recursive: true, force: true });
    }
  });

  it('a sparse image (256 MiB holding 2 MiB) costs 2 MiB and restores identical', async () => {
    const sparse = path.join(work, 'sparse.img');
    const fh = await open(sparse, 'w');
    try {
      await fh.truncate(256 * MiB);
      await fh.write(randomBytes(MiB), 0, MiB, 10 * MiB);
      // Not block-aligned: spans two 1 MiB blocks, each half zeros (compressed away).
      await fh.write(randomBytes(MiB), 0, MiB, 200 * MiB + 300 * KiB);
    } finally {
      await fh.close();
    }
    const sha256 = await sha256File(sparse);
    // Default block size (1 MiB) and default compression.
    const id = await addDatasource(server, { agent: 'imager', path: sparse, kind: 'image' });
    const job = await backup(server, id);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.bytesScanned).toBe(256 * MiB);
    expect(job.bytesSent).toBeGreaterThanOrEqual(2 * MiB);
    expect(job.bytesSent).toBeLessThan(2 * MiB + 64 * KiB);

    const target = path.join(work, 'restore-sparse', 'out.img');
    const restored = await restore(server, job.rpId!, target);
    expect(restored, restored.error ?? '').toMatchObject({ state: 'succeeded' });
    const st = await stat(target);
    expect(st.size).toBe(256 * MiB);
    expect(await sha256File(target)).toBe(sha256);
    // Zero blocks are restored as holes, not written out.
    expect(st.blocks * 512).toBeLessThan(32 * MiB);
  });
});
