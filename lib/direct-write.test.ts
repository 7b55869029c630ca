import { createHash, randomFillSync } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DIRECT_MIN_BYTES, DirectWriter } from './direct-write.ts';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-direct-write-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const digest = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

describe('DirectWriter', () => {
  it('writes files of every length byte-identical, below and above the direct threshold', async () => {
    const w = new DirectWriter();
    const MiB = 1024 * 1024;
    // Below the threshold, exactly at it, whole pieces, a partial last block, several pieces.
    for (const len of [0, 1000, DIRECT_MIN_BYTES, 4 * MiB, 4 * MiB + 1, 9 * MiB + 123, 8 * MiB + 4096]) {
      const data = randomFillSync(Buffer.alloc(len));
      const file = path.join(dir, `f${len}`);
      await w.writeNew(file, data, 0o600);
      const back = await readFile(file);
      expect(back.length, `length of ${len}`).toBe(len);
      expect(digest(back), `content of ${len}`).toBe(digest(data));
      expect((await stat(file)).mode & 0o777).toBe(0o600);
    }
  });

  it('writes several files at once, each with its own content (staging buffers are not shared)', async () => {
    const w = new DirectWriter();
    // Shared memory, as a vault pack slot is, at an offset that is not aligned.
    const slot = new Uint8Array(new SharedArrayBuffer(24 * 1024 * 1024));
    randomFillSync(slot);
    const parts = [0, 1, 2].map((i) =>
      slot.subarray(i * 8 * 1024 * 1024 + 13, (i + 1) * 8 * 1024 * 1024 - 7),
    );
    await Promise.all(parts.map((p, i) => w.writeNew(path.join(dir, `p${i}`), p, 0o600)));
    for (const [i, p] of parts.entries())
      expect(digest(await readFile(path.join(dir, `p${i}`)))).toBe(digest(p));
  });

  it('keeps its staging buffers for the next files, and drops them once idle', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    try {
      const w = new DirectWriter();
      const kept = () => (w as unknown as { free: unknown[] }).free.length;
      const big = (n: number) => Buffer.alloc(2 * DIRECT_MIN_BYTES, n);
      await Promise.all([1, 2].map((n) => w.writeNew(path.join(dir, `k${n}`), big(n), 0o600)));
      expect(kept()).toBe(2); // two files at once, one buffer each (their content is in memory)
      await w.writeNew(path.join(dir, 'k3'), big(3), 0o600);
      expect(kept()).toBe(2); // the next file reused one
      vi.advanceTimersByTime(1_900);
      expect(kept()).toBe(2);
      vi.advanceTimersByTime(200);
      expect(kept()).toBe(0);
      expect(digest(await readFile(path.join(dir, 'k3')))).toBe(digest(big(3)));
    } finally {
      vi.useRealTimers();
    }
  });

  it('never overwrites an existing file', async () => {
    const w = new DirectWriter();
    const file = path.join(dir, 'there');
    await writeFile(file, 'keep me');
    await expect(w.writeNew(file, Buffer.alloc(2 * DIRECT_MIN_BYTES, 1), 0o600)).rejects.toThrow(/EEXIST/);
    await expect(w.writeNew(file, Buffer.from('small'), 0o600)).rejects.toThrow(/EEXIST/);
    expect(await readFile(file, 'utf8')).toBe('keep me');
  });
});

describe('DirectFile', () => {
  const KiB = 1024;
  const MiB = 1024 * KiB;

  /** Writes `parts` (data, or a length of zeros skipped) through a DirectFile; returns what the file must hold. */
  async function writeParts(
    w: DirectWriter,
    file: string,
    parts: (Buffer | number)[],
    buffers: 1 | 2 = 2,
  ): Promise<Buffer> {
    const f = await w.create(file, 0o600, buffers);
    expect(f, 'this file system writes directly').toBeDefined();
    let pos = 0;
    try {
      for (const p of parts) {
        if (typeof p === 'number') pos += p;
        else {
          await f!.write(p, pos);
          pos += p.length;
        }
      }
      await f!.finish(pos);
    } finally {
      await f!.close();
    }
    return Buffer.concat(parts.map((p) => (typeof p === 'number' ? Buffer.alloc(p) : p)));
  }

  it('writes blocks of any size at any offset, short and long gaps, across pieces, byte-identical', async () => {
    const w = new DirectWriter();
    const rnd = (n: number) => randomFillSync(Buffer.alloc(n));
    const cases: (Buffer | number)[][] = [
      [rnd(100)],
      [rnd(3 * MiB + 17), rnd(2 * MiB + 5)],
      [rnd(5000), 10, rnd(7000), 4095, rnd(1)],
      [rnd(70_000), 200 * KiB, rnd(90_001), 1 * MiB + 3, rnd(4 * MiB)],
      [256 * KiB, rnd(300_000), 64 * KiB],
      [rnd(4 * MiB - 100), 300, rnd(500)],
      [rnd(4 * MiB - 100), 65 * KiB + 1, rnd(500), 3 * MiB],
    ];
    for (const buffers of [2, 1] as const) {
      for (const [i, parts] of cases.entries()) {
        const file = path.join(dir, `c${i}-${buffers}`);
        const expected = await writeParts(w, file, parts, buffers);
        const back = await readFile(file);
        const what = `case ${i}, ${buffers} staging buffer(s)`;
        expect(back.length, `${what}: length`).toBe(expected.length);
        expect(digest(back), `${what}: content`).toBe(digest(expected));
      }
    }
  });

  it('leaves long runs of skipped zeros as holes', async () => {
    const w = new DirectWriter();
    const file = path.join(dir, 'sparse');
    const data = randomFillSync(Buffer.alloc(64 * KiB));
    await writeParts(w, file, [data, 64 * MiB, data, 64 * MiB]);
    const st = await stat(file);
    expect(st.size).toBe(128 * MiB + 128 * KiB);
    // Allocated: the two data blocks (and the first piece's trial blocks), not 128 MiB of zeros.
    expect(st.blocks * 512).toBeLessThan(1 * MiB);
  });

  it('refuses to go back before what it wrote, and a closed file gives its buffers back', async () => {
    const w = new DirectWriter();
    const f = (await w.create(path.join(dir, 'back'), 0o600))!;
    await f.write(Buffer.alloc(10_000, 1), 0);
    await expect(f.write(Buffer.alloc(10, 2), 5000)).rejects.toThrow(/goes back/);
    await f.close();
    await f.close();
    // The same two staging buffers serve the next file.
    const expected = await writeParts(w, path.join(dir, 'next'), [randomFillSync(Buffer.alloc(5 * MiB))]);
    expect(digest(await readFile(path.join(dir, 'next')))).toBe(digest(expected));
  });
});
