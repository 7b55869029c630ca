import { createHash, randomFillSync } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
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

  it('never overwrites an existing file', async () => {
    const w = new DirectWriter();
    const file = path.join(dir, 'there');
    await writeFile(file, 'keep me');
    await expect(w.writeNew(file, Buffer.alloc(2 * DIRECT_MIN_BYTES, 1), 0o600)).rejects.toThrow(/EEXIST/);
    await expect(w.writeNew(file, Buffer.from('small'), 0o600)).rejects.toThrow(/EEXIST/);
    expect(await readFile(file, 'utf8')).toBe('keep me');
  });
});
