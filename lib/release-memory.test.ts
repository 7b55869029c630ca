import { describe, expect, it } from 'vitest';
import { releaseMemory } from './release-memory.ts';

const MiB = 1024 * 1024;
const rss = () => process.memoryUsage.rss();
const glibc = Boolean(
  (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime,
);

describe('releaseMemory', () => {
  it('gives freed malloc memory back to the system where glibc keeps it', () => {
    // 256 MiB in 64 KiB buffers (below glibc's mmap threshold: they come from its arenas), with
    // every 64th kept alive, so the freed ones cannot simply be cut off the top of the heap.
    let buffers: Buffer[] = [];
    for (let i = 0; i < 4096; i++) buffers.push(Buffer.allocUnsafeSlow(64 * 1024).fill(i & 0xff));
    const peak = rss();
    const kept = buffers.filter((_, i) => i % 64 === 0);
    buffers = [];

    const released = releaseMemory();

    if (!glibc) {
      expect(released).toBe(false); // nothing to call elsewhere
      return;
    }
    expect(released).toBe(true);
    expect(peak - rss()).toBeGreaterThan(150 * MiB);
    expect(kept.every((b, i) => b[0] === ((i * 64) & 0xff))).toBe(true);
  });
});
