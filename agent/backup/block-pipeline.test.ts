import { createHash, randomBytes } from 'node:crypto';
import type { Piscina } from 'piscina';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BlockDecoder } from '../../protocol/block-codec.ts';
import { BlockEncoding } from '../../protocol/messages.ts';
import { BlockPipeline } from './block-pipeline.ts';
import { createWorkerPool } from '../../lib/worker-pool.ts';

/** One block decoded into a buffer of its own (a fresh decoder per call). */
const decodeBlock = (enc: number, data: Uint8Array, maxSize?: number) =>
  new BlockDecoder().decode(enc, data, maxSize);

// A real pool of the real worker file.
let pool: Piscina;
beforeAll(() => {
  pool = createWorkerPool(new URL('./block-worker.ts', import.meta.url), 2);
});
afterAll(async () => {
  await pool?.destroy();
});

const KiB = 1024;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest();
const text = (n: number, seed: number) =>
  Buffer.from(`${seed}: the quick brown fox jumps over the lazy dog; `.repeat(Math.ceil(n / 40)).slice(0, n));

/** submit() takes the block's buffer (it is moved to a worker): hand it a copy we can still compare with. */
const owned = (b: Buffer) => {
  const copy = Buffer.allocUnsafeSlow(b.length);
  b.copy(copy);
  return copy;
};

/** Whether `p` settles within `ms`. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const r = await Promise.race([p.then(() => true as const), late]);
  clearTimeout(timer);
  return r;
}

describe('BlockPipeline with a real worker pool', () => {
  it('returns results in submit order: hashes, zero blocks, compressed and raw blocks', async () => {
    const pipeline = new BlockPipeline(pool, { compress: true, zeroBlocks: true });
    const blocks: Buffer[] = [];
    // More blocks than one batch holds, of every kind, in an order that would show a mix-up.
    for (let i = 0; i < 150; i++) {
      if (i % 3 === 0) blocks.push(randomBytes(4 * KiB + i));
      else if (i % 3 === 1) blocks.push(text(8 * KiB + i, i));
      else blocks.push(Buffer.alloc(i % 2 === 0 ? 64 * KiB : 100));
    }
    blocks.push(randomBytes(1)); // a short tail
    const pending = [];
    for (const b of blocks) pending.push(await pipeline.submit(owned(b)));
    expect(pending.map((p) => p.size)).toEqual(blocks.map((b) => b.length));
    for (const [i, p] of pending.entries()) {
      const raw = blocks[i]!;
      const r = await p.result();
      pipeline.release(r.size);
      expect(r.size, `block ${i}`).toBe(raw.length);
      expect(r.hash.equals(sha256(raw)), `hash of block ${i}`).toBe(true);
      const zero = raw.every((x) => x === 0);
      expect(r.zero, `block ${i}`).toBe(zero);
      if (zero) continue;
      if (i % 3 === 1) {
        expect(r.enc, `block ${i}`).toBe(BlockEncoding.zstd);
        expect(r.data.length).toBeLessThan(raw.length);
      } else {
        expect(r.enc, `block ${i}`).toBe(BlockEncoding.raw);
      }
      expect(decodeBlock(r.enc, r.data).equals(raw), `block ${i} decodes`).toBe(true);
    }
  });

  it('processes batches on the calling thread while the pool is behind: same results, same order', async () => {
    // One thread, not started yet: the first batch waits for it, so the next ones are done here.
    const one = createWorkerPool(new URL('./block-worker.ts', import.meta.url), 1);
    try {
      const run = vi.spyOn(one, 'run');
      const pipeline = new BlockPipeline(one, {
        compress: true,
        zeroBlocks: true,
        maxInflightBytes: 64 * 1024 * KiB,
      });
      // 1 MiB each: a batch apiece.
      const blocks = Array.from({ length: 24 }, (_, i) =>
        i % 2 === 0 ? randomBytes(1024 * KiB) : text(1024 * KiB, i),
      );
      const pending = [];
      for (const b of blocks) pending.push(await pipeline.submit(owned(b)));
      for (const [i, p] of pending.entries()) {
        const raw = blocks[i]!;
        const r = await p.result();
        pipeline.release(r.size);
        expect(r.hash.equals(sha256(raw)), `hash of block ${i}`).toBe(true);
        expect(r.enc, `block ${i}`).toBe(i % 2 === 0 ? BlockEncoding.raw : BlockEncoding.zstd);
        expect(decodeBlock(r.enc, r.data).equals(raw), `block ${i} decodes`).toBe(true);
      }
      expect(run.mock.calls.length).toBeGreaterThan(0);
      expect(run.mock.calls.length).toBeLessThan(blocks.length);
    } finally {
      await one.destroy();
    }
  });

  it('does not compress a block that still has the hash of its position in the base point', async () => {
    const pipeline = new BlockPipeline(pool, { compress: true, zeroBlocks: true });
    const unchanged = text(64 * KiB, 1);
    const changed = text(64 * KiB, 2);
    const first = await pipeline.submit(owned(unchanged), sha256(unchanged));
    // Its position held other content before: compressed, as any new block.
    const second = await pipeline.submit(owned(changed), sha256(unchanged));
    const third = await pipeline.submit(owned(changed), null);
    const [a, b, c] = [await first.result(), await second.result(), await third.result()];
    expect(a.hash.equals(sha256(unchanged))).toBe(true);
    expect(a.enc, 'an unchanged block is not sent, so not compressed').toBe(BlockEncoding.raw);
    expect(a.data.equals(unchanged)).toBe(true);
    for (const r of [b, c]) {
      expect(r.hash.equals(sha256(changed))).toBe(true);
      expect(r.enc).toBe(BlockEncoding.zstd);
      expect(decodeBlock(r.enc, r.data).equals(changed)).toBe(true);
    }
  });

  it('treats zero blocks like any other when not asked to recognise them (file chunks)', async () => {
    const pipeline = new BlockPipeline(pool, { compress: true, zeroBlocks: false });
    const zeros = Buffer.alloc(256 * KiB);
    const r = await (await pipeline.submit(owned(zeros))).result();
    expect(r.zero).toBe(false);
    expect(r.hash.equals(sha256(zeros))).toBe(true);
    expect(r.enc).toBe(BlockEncoding.zstd);
    expect(r.data.length).toBeLessThan(1024);
    expect(decodeBlock(r.enc, r.data).equals(zeros)).toBe(true);
  });

  it('reuses the buffers of blocks it was given back, and every block stays right', async () => {
    const pipeline = new BlockPipeline(pool, {
      compress: true,
      zeroBlocks: false,
      maxInflightBytes: 4 * 64 * KiB,
    });
    const seen = new Set<ArrayBufferLike>();
    let reused = 0;
    for (let round = 0; round < 60; round++) {
      // Raw (random) and compressed (text) blocks of sizes that share capacities or not.
      const size = 64 * KiB + ((round * 7919) % (200 * KiB));
      const content = round % 2 === 0 ? randomBytes(size) : text(size, round);
      const buf = pipeline.allocate(size);
      if (seen.has(buf.buffer)) reused += 1;
      content.copy(buf);
      const r = await (await pipeline.submit(buf)).result();
      expect(buf.length, 'moved to the worker, not copied').toBe(0);
      pipeline.release(r.size);
      expect(r.hash.equals(sha256(content)), `round ${round}`).toBe(true);
      expect(decodeBlock(r.enc, r.data).equals(content), `round ${round}`).toBe(true);
      if (r.enc === BlockEncoding.raw) seen.add(r.data.buffer);
      r.recycle();
      r.recycle(); // a second call changes nothing
    }
    expect(reused).toBeGreaterThan(10);
  });

  it('sends every block raw when compression is off', async () => {
    const pipeline = new BlockPipeline(pool, { compress: false, zeroBlocks: true });
    const raw = text(64 * KiB, 1);
    const given = owned(raw);
    const r = await (await pipeline.submit(given)).result();
    expect(given.length, 'the submitted buffer was moved to the worker').toBe(0);
    expect(r.enc).toBe(BlockEncoding.raw);
    expect(r.data.equals(raw)).toBe(true);
    expect(r.hash.equals(sha256(raw))).toBe(true);
  });

  it('holds submit while more than maxInflightBytes are unreleased, and goes on after release', async () => {
    const BLOCK = 64 * KiB;
    const pipeline = new BlockPipeline(pool, {
      compress: true,
      zeroBlocks: true,
      maxInflightBytes: 3 * BLOCK,
    });
    const first = [];
    for (let i = 0; i < 3; i++) first.push(await pipeline.submit(randomBytes(BLOCK)));
    // All processed, none released: a fourth block does not fit.
    const results = await Promise.all(first.map((p) => p.result()));
    const fourth = pipeline.submit(randomBytes(BLOCK));
    expect(await settlesWithin(fourth, 150)).toBe(false);
    pipeline.release(results[0]!.size);
    expect(await settlesWithin(fourth, 2000)).toBe(true);
    const r4 = await (await fourth).result();
    expect(r4.size).toBe(BLOCK);

    // A discarded block frees its room too, once processed.
    const fifth = pipeline.submit(randomBytes(BLOCK));
    expect(await settlesWithin(fifth, 150)).toBe(false);
    first[1]!.discard();
    expect(await settlesWithin(fifth, 2000)).toBe(true);
  });

  it('lets a block larger than the bound through when nothing else is in flight', async () => {
    const pipeline = new BlockPipeline(pool, {
      compress: true,
      zeroBlocks: true,
      maxInflightBytes: 64 * KiB,
    });
    const big = randomBytes(256 * KiB);
    const p = pipeline.submit(owned(big));
    expect(await settlesWithin(p, 2000)).toBe(true);
    const r = await (await p).result();
    expect(r.hash.equals(sha256(big))).toBe(true);
    pipeline.release(r.size);
    expect(await settlesWithin(pipeline.submit(randomBytes(10)), 2000)).toBe(true);
  });
});
