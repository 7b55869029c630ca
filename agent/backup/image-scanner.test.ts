import { createHash, randomBytes } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FileEntry } from '../../protocol/entry.ts';
import type { CachedFile, FileSource } from './files-scanner.ts';
import { type ImageScanOptions, scanImage } from './image-scanner.ts';

/* 1 MiB blocks: five of them and a tail make an image larger than one 4 MiB read. */
const BS = 1024 * 1024;
let dir: string;
let image: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-image-'));
  image = path.join(dir, 'disk.img');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Data, zeros, data, zeros, data, then a tail that is half zeros. */
function makeImage(): Buffer {
  const tail = Buffer.concat([randomBytes(1000), Buffer.alloc(1000)]);
  return Buffer.concat([
    randomBytes(BS),
    Buffer.alloc(BS),
    randomBytes(BS),
    Buffer.alloc(BS),
    randomBytes(BS),
    tail,
  ]);
}

interface Run {
  blocks: Buffer[];
  /** What each block was submitted with as its hash at that position in the cached image. */
  previous: (Uint8Array | null)[];
  entries: { entry: FileEntry; source: FileSource }[];
  restarts: number;
}

function scan(extra: Partial<ImageScanOptions> = {}) {
  const run: Run = { blocks: [], previous: [], entries: [], restarts: 0 };
  const result = scanImage({
    path: image,
    blockSize: BS,
    submit: async (data, previous) => {
      run.blocks.push(data);
      run.previous.push(previous);
    },
    onRestart: () => {
      run.restarts += 1;
    },
    onEntry: async (entry, source) => {
      run.entries.push({ entry, source });
    },
    ...extra,
  });
  return { run, result };
}

describe('scanImage', () => {
  it('reads an image as one file entry in fixed-size blocks, zero regions included', async () => {
    const data = makeImage();
    await writeFile(image, data, { mode: 0o640 });
    const st = await stat(image);
    const { run, result } = scan();
    expect(await result).toEqual({
      bytesScanned: data.length,
      files: 1,
      bytes: data.length,
      inconsistent: [],
      changedWhileRead: false,
    });
    expect(run.blocks.map((b) => b.length)).toEqual([BS, BS, BS, BS, BS, 2000]);
    expect(run.previous, 'no cache: no previous hashes').toEqual([null, null, null, null, null, null]);
    // Block i is slice i of the image, across the 4 MiB read boundary too.
    for (const [i, b] of run.blocks.entries())
      expect(sha256(b), `block ${i}`).toBe(sha256(data.subarray(i * BS, (i + 1) * BS)));
    // Zero blocks are submitted like any other: recognising them is the pool's job.
    expect(run.blocks[1]!.equals(Buffer.alloc(BS))).toBe(true);
    // Each block owns its memory (it may be moved to a worker thread).
    for (const b of run.blocks) expect(b.buffer.byteLength).toBe(b.length);
    expect(run.restarts).toBe(0);

    expect(run.entries).toHaveLength(1);
    const { entry, source } = run.entries[0]!;
    expect(entry).toEqual({
      type: 'file',
      path: 'disk.img',
      size: data.length,
      mode: 0o640,
      uid: st.uid,
      gid: st.gid,
      mtimeMs: st.mtimeMs,
      hashes: [],
    });
    expect(source).toEqual({
      kind: 'read',
      stamp: { size: data.length, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino },
      previous: undefined,
    });
  });

  it('reads nothing when the cached entry matches size, times and inode', async () => {
    const data = makeImage();
    await writeFile(image, data);
    const st = await stat(image);
    const hashes = [0, 1, 2, 3, 4, 5].map((i) => createHash('sha256').update(`block ${i}`).digest());
    const cached: CachedFile = {
      size: st.size,
      mtimeMs: st.mtimeMs,
      ctimeMs: st.ctimeMs,
      ino: st.ino,
      hashes: [hashes[0]!, null, hashes[2]!, null, hashes[4]!, hashes[5]!],
    };
    const { run, result } = scan({ cached });
    const r = await result;
    expect(run.blocks).toEqual([]);
    expect(r.bytesScanned).toBe(0);
    expect(r.bytes).toBe(data.length);
    expect(run.entries).toHaveLength(1);
    expect(run.entries[0]!.entry.hashes).toEqual(cached.hashes);
    expect(run.entries[0]!.entry.size).toBe(data.length);
    expect(run.entries[0]!.source).toEqual({ kind: 'cached', cached });

    // Any one of the four differing means the image is read, and the cache entry is passed on.
    for (const stale of [
      { ...cached, ino: cached.ino + 1 },
      { ...cached, size: cached.size - 1 },
      { ...cached, mtimeMs: cached.mtimeMs - 1 },
      { ...cached, ctimeMs: cached.ctimeMs - 1 },
    ]) {
      const again = scan({ cached: stale });
      expect((await again.result).bytesScanned).toBe(data.length);
      expect(again.run.blocks).toHaveLength(6);
      // Each block comes with the cached hash of its position (across the 4 MiB read boundary).
      expect(again.run.previous).toEqual(stale.hashes);
      expect(again.run.entries[0]!.source).toMatchObject({ kind: 'read', previous: stale });
    }
  });

  it('refuses a path that is a directory, and a missing one', async () => {
    await mkdir(path.join(dir, 'folder'));
    const { run, result } = scan({ path: path.join(dir, 'folder') });
    await expect(result).rejects.toThrow(/neither a disk-image file nor a block device/);
    expect(run.entries).toEqual([]);
    await expect(scan({ path: path.join(dir, 'absent.img') }).result).rejects.toThrow(/ENOENT/);
  });

  it('reports an image that changed while being read', async () => {
    await writeFile(image, randomBytes(2 * BS));
    let grown = false;
    const { run, result } = scan({
      submit: async (data) => {
        run.blocks.push(data);
        if (grown) return;
        grown = true;
        await appendFile(image, randomBytes(100));
      },
    });
    const r = await result;
    expect(r.changedWhileRead).toBe(true);
    expect(run.entries[0]!.entry.size).toBe(r.bytes);
    expect(run.blocks.reduce((n, b) => n + b.length, 0)).toBe(r.bytes);
  });

  it('abandons the blocks submitted so far when the scan fails', async () => {
    await writeFile(image, randomBytes(3 * BS));
    let n = 0;
    const { run, result } = scan({
      submit: async () => {
        if (++n === 2) throw new Error('link down');
      },
    });
    await expect(result).rejects.toThrow('link down');
    expect(run.restarts).toBe(1);
    expect(run.entries).toEqual([]);
  });
});
