import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  blockLayout,
  ContentChunker,
  chunkBounds,
  fileBlockSize,
  MAX_BLOCKS_PER_FILE,
} from './content-chunker.ts';
import { cutByContent, pseudoRandom } from './content-chunker.test-helpers.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

const bytes = (n: number, label: string) => pseudoRandom(label, n);

const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('content-defined chunking', () => {
  const chunker = new ContentChunker(chunkBounds(256 * KiB, 4 * MiB));

  it('derives bounds from the block size, never above the largest block', () => {
    expect(chunkBounds(MiB, 4 * MiB)).toEqual({ min: 512 * KiB, avg: MiB, max: 4 * MiB });
    expect(chunkBounds(4 * MiB, 4 * MiB)).toEqual({ min: 2 * MiB, avg: 4 * MiB, max: 4 * MiB });
    expect(blockLayout('image', 65536, 4 * MiB)).toBe('fixed:65536');
    expect(blockLayout('files', MiB, 4 * MiB)).not.toBe(blockLayout('files', 2 * MiB, 4 * MiB));
  });

  it('cuts very large files around a larger block size, so that no file has too many blocks', () => {
    const GiB = 1024 * MiB;
    expect(fileBlockSize(256 * KiB, 10 * GiB, 4 * MiB)).toBe(256 * KiB);
    expect(fileBlockSize(256 * KiB, 32 * GiB, 4 * MiB)).toBe(256 * KiB);
    expect(fileBlockSize(256 * KiB, 32 * GiB + 1, 4 * MiB)).toBe(512 * KiB);
    expect(fileBlockSize(256 * KiB, 200 * GiB, 4 * MiB)).toBe(2 * MiB);
    expect(fileBlockSize(256 * KiB, 4096 * GiB, 4 * MiB)).toBe(4 * MiB);
    for (const size of [GiB, 40 * GiB, 100 * GiB, 500 * GiB]) {
      const bs = fileBlockSize(256 * KiB, size, 4 * MiB);
      // Blocks average at least half the block size (the minimum), so the count stays bounded.
      expect(size / (bs / 2)).toBeLessThanOrEqual(2 * MAX_BLOCKS_PER_FILE);
    }
  });

  it('cuts within the bounds, around the average, and covers every byte once', () => {
    const data = bytes(24 * MiB, 'bounds');
    const chunks = cutByContent(chunker, data);
    const { min, avg, max } = chunker.bounds;
    for (const c of chunks.slice(0, -1)) {
      expect(c.length).toBeGreaterThanOrEqual(min);
      expect(c.length).toBeLessThanOrEqual(max);
    }
    expect(Buffer.concat(chunks).equals(data)).toBe(true);
    const mean = data.length / chunks.length;
    expect(mean).toBeGreaterThan(avg * 0.75);
    expect(mean).toBeLessThan(avg * 1.5);
  });

  it('cuts the same content the same way, wherever it starts', () => {
    const tail = bytes(8 * MiB, 'shift');
    const a = cutByContent(chunker, tail).map(digest);
    // The same bytes behind an unaligned prefix: after the first cut or two, the blocks agree.
    const b = cutByContent(chunker, Buffer.concat([bytes(12_345, 'prefix'), tail])).map(digest);
    const shared = a.filter((d) => b.includes(d));
    expect(shared.length).toBeGreaterThanOrEqual(a.length - 2);
  });

  it('finds a range copied to an unaligned offset of the same file', () => {
    const head = bytes(5 * MiB + 777, 'head');
    const copied = bytes(6 * MiB, 'copied');
    const file = Buffer.concat([copied, head, copied]);
    const chunks = cutByContent(chunker, file).map(digest);
    const distinct = new Set(chunks);
    // Most blocks of the second copy are blocks of the first.
    expect(chunks.length - distinct.size).toBeGreaterThanOrEqual(Math.floor((6 * MiB) / chunker.bounds.max));
    expect(chunks.length - distinct.size).toBeGreaterThan(chunks.length / 4);
  });

  it('keeps a file no larger than the minimum whole, and cuts long zero runs at the maximum', () => {
    const { min, max } = chunker.bounds;
    expect(chunker.cut(bytes(min, 'small'), 0, min)).toBe(min);
    const zeros = Buffer.alloc(3 * max);
    expect(cutByContent(chunker, zeros).map((c) => c.length)).toEqual([max, max, max]);
  });

  it('is stable: the gear table and masks are part of what deduplicates across versions', () => {
    const chunks = cutByContent(chunker, bytes(4 * MiB, 'stable')).map((c) => c.length);
    expect(chunks.reduce((n, x) => n + x, 0)).toBe(4 * MiB);
    // Recorded once from this implementation: a change here means old and new blocks differ.
    expect(chunks).toMatchInlineSnapshot(`
      [
        292922,
        356573,
        303443,
        238544,
        269180,
        325109,
        325098,
        264731,
        294138,
        269672,
        288902,
        266126,
        152802,
        153289,
        263487,
        130288,
      ]
    `);
  });
});
