import { describe, expect, it } from 'vitest';
import { BlockBuffers } from './block-buffers.ts';

const KiB = 1024;

describe('BlockBuffers', () => {
  it('hands out buffers of the size asked, movable whole, and small ones plain', () => {
    const pool = new BlockBuffers();
    const b = pool.take(100 * KiB);
    expect(b.length).toBe(100 * KiB);
    expect(b.buffer.byteLength).toBe(128 * KiB);
    expect(pool.movable(b)).toBe(true);
    expect(pool.movable(b.subarray(1))).toBe(false);
    expect(pool.movable(Buffer.from(new ArrayBuffer(128 * KiB), 0, 100 * KiB))).toBe(false);
    const small = pool.take(1000);
    expect(small.buffer.byteLength).toBe(1000);
    expect(pool.movable(small)).toBe(true);
  });

  it('reuses a buffer given back for a size that fits, once only', () => {
    const pool = new BlockBuffers();
    const a = pool.take(200 * KiB);
    pool.give(a);
    pool.give(a); // twice: still handed out once
    const b = pool.take(150 * KiB);
    expect(b.buffer).toBe(a.buffer);
    expect(b.length).toBe(150 * KiB);
    expect(pool.take(150 * KiB).buffer).not.toBe(a.buffer);
    // Not for a block needing more than it holds, nor one under half its size.
    pool.give(b);
    expect(pool.take(300 * KiB).buffer).not.toBe(a.buffer);
    expect(pool.take(64 * KiB).buffer).not.toBe(a.buffer);
    expect(pool.take(192 * KiB).buffer).toBe(a.buffer);
  });

  it('keeps at most its limit of free buffers, and ignores buffers of odd capacities', () => {
    const pool = new BlockBuffers(256 * KiB);
    const bufs = [pool.take(128 * KiB), pool.take(128 * KiB), pool.take(128 * KiB)];
    for (const b of bufs) pool.give(b);
    const again = [pool.take(128 * KiB), pool.take(128 * KiB), pool.take(128 * KiB)];
    const reused = again.filter((b) => bufs.some((x) => x.buffer === b.buffer));
    expect(reused).toHaveLength(2);
    const odd = Buffer.allocUnsafeSlow(100 * KiB + 1);
    pool.give(odd);
    expect(pool.take(100 * KiB + 1).buffer).not.toBe(odd.buffer);
  });
});
