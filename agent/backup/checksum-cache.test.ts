import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Packr } from 'msgpackr';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { compress } from 'zstd-napi';
import { loadChecksumCache, saveChecksumCache } from './checksum-cache.ts';
import type { CachedFile } from './files-scanner.ts';

let stateDir: string;
const DS = '6f1c2d3e-0000-4000-8000-000000000001';
const LAYOUT = 'fixed:65536';
const cacheFile = () => path.join(stateDir, 'cache', `${DS}.cache`);

beforeEach(async () => {
  stateDir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-cache-'));
});
afterEach(async () => {
  await rm(stateDir, { recursive: true, force: true });
});

const h = (s: string) => createHash('sha256').update(s).digest();
const hex = (x: Buffer | null) => (x === null ? null : x.toString('hex'));

function sample(): Map<string, CachedFile> {
  return new Map<string, CachedFile>([
    ['a.bin', { size: 0, mtimeMs: 1700000000123.4568, ctimeMs: 1700000000999.25, ino: 42, hashes: [] }],
    [
      'dir/b.bin',
      { size: 3 << 20, mtimeMs: 1, ctimeMs: 2, ino: 2 ** 40 + 7, hashes: [h('1'), h('2'), h('3')] },
    ],
    ['ünï/ç😀de', { size: 5, mtimeMs: -1000.5, ctimeMs: 3, ino: 1, hashes: [h('x')] }],
  ]);
}

describe('checksum cache', () => {
  it('round-trips exactly, in a private file, leaving no temp files', async () => {
    const cache = sample();
    await saveChecksumCache(stateDir, DS, 'rp-1', LAYOUT, cache);
    const loaded = await loadChecksumCache(stateDir, DS, 'rp-1', LAYOUT);
    expect(loaded).toBeDefined();
    expect([...loaded!.keys()]).toEqual([...cache.keys()]);
    for (const [p, c] of cache) {
      const l = loaded!.get(p)!;
      expect({ ...l, hashes: l.hashes.map(hex) }).toEqual({ ...c, hashes: c.hashes.map(hex) });
      for (const x of l.hashes) expect(Buffer.isBuffer(x) && x.length === 32).toBe(true);
    }
    expect((await stat(cacheFile())).mode & 0o777).toBe(0o600);
    expect(await readdir(path.join(stateDir, 'cache'))).toEqual([`${DS}.cache`]);
  });

  it('round-trips null hashes (all-zero blocks) in place', async () => {
    const cache = new Map<string, CachedFile>([
      [
        'sparse',
        { size: 4 * 65536 + 3, mtimeMs: 5, ctimeMs: 6, ino: 7, hashes: [h('a'), null, h('c'), null, null] },
      ],
      ['zeros', { size: 2 * 65536, mtimeMs: 5, ctimeMs: 6, ino: 8, hashes: [null, null] }],
      ['plain', { size: 3, mtimeMs: 5, ctimeMs: 6, ino: 9, hashes: [h('p')] }],
    ]);
    await saveChecksumCache(stateDir, DS, 'rp-z', LAYOUT, cache);
    const loaded = await loadChecksumCache(stateDir, DS, 'rp-z', LAYOUT);
    expect(loaded).toBeDefined();
    for (const [p, c] of cache) {
      const l = loaded!.get(p);
      expect(l, p).toBeDefined();
      expect({ ...l!, hashes: l!.hashes.map(hex) }, p).toEqual({ ...c, hashes: c.hashes.map(hex) });
    }
    expect(loaded!.get('sparse')!.hashes[1]).toBeNull();
    expect(loaded!.get('zeros')!.hashes).toEqual([null, null]);
  });

  it('replaces the previous cache of the datasource', async () => {
    await saveChecksumCache(stateDir, DS, 'rp-1', LAYOUT, sample());
    await saveChecksumCache(stateDir, DS, 'rp-2', LAYOUT, new Map());
    expect(await loadChecksumCache(stateDir, DS, 'rp-1', LAYOUT)).toBeUndefined();
    expect((await loadChecksumCache(stateDir, DS, 'rp-2', LAYOUT))?.size).toBe(0);
  });

  it('is ignored when missing, for another recovery point, or for a full backup', async () => {
    expect(await loadChecksumCache(stateDir, DS, 'rp-1', LAYOUT)).toBeUndefined();
    await saveChecksumCache(stateDir, DS, 'rp-1', LAYOUT, sample());
    expect(await loadChecksumCache(stateDir, DS, 'rp-0', LAYOUT)).toBeUndefined();
    expect(await loadChecksumCache(stateDir, DS, null, LAYOUT)).toBeUndefined();
    expect(await loadChecksumCache(stateDir, 'other-ds', 'rp-1', LAYOUT)).toBeUndefined();
  });

  it('is ignored when the blocks are now cut another way (block size, chunking)', async () => {
    await saveChecksumCache(stateDir, DS, 'rp-1', LAYOUT, sample());
    expect(await loadChecksumCache(stateDir, DS, 'rp-1', 'fixed:1048576')).toBeUndefined();
    expect((await loadChecksumCache(stateDir, DS, 'rp-1', LAYOUT))?.size).toBe(3);
  });

  it('is ignored when corrupt, truncated, of another version, or with a bad row', async () => {
    await saveChecksumCache(stateDir, DS, 'rp-1', LAYOUT, sample());
    const good = await readFile(cacheFile());

    const flipped = Buffer.from(good);
    flipped[flipped.length - 10]! ^= 0xff;
    const packr = new Packr({ useRecords: false });
    const forged = (body: object) => compress(packr.pack(body));
    const base = {
      format: 'holdfast-checksum-cache',
      version: 2,
      datasourceId: DS,
      rpId: 'rp-1',
      layout: LAYOUT,
    };
    const bad: [string, Buffer][] = [
      ['bit flip', flipped],
      ['truncated', good.subarray(0, good.length >> 1)],
      ['not zstd', Buffer.from('hello')],
      ['empty', Buffer.alloc(0)],
      ['older version', forged({ ...base, version: 1, files: [] })],
      ['future version', forged({ ...base, version: 3, files: [] })],
      ['other layout', forged({ ...base, layout: 'fixed:131072', files: [] })],
      ['no layout', forged({ ...base, layout: undefined, files: [] })],
      ['other datasource', forged({ ...base, datasourceId: 'x', files: [] })],
      ['short hash', forged({ ...base, files: [['a', 1, 1, 1, 1, Buffer.alloc(31)]] })],
      ['negative size', forged({ ...base, files: [['a', -1, 1, 1, 1, Buffer.alloc(0)]] })],
      ['string mtime', forged({ ...base, files: [['a', 1, '1', 1, 1, Buffer.alloc(32)]] })],
      ['not a map', forged([1, 2, 3])],
    ];
    for (const [why, bytes] of bad) {
      await writeFile(cacheFile(), bytes);
      expect(await loadChecksumCache(stateDir, DS, 'rp-1', LAYOUT), why).toBeUndefined();
    }
    // The forging itself is sound: the same body with valid rows loads.
    await writeFile(cacheFile(), forged({ ...base, files: [['a', 1, 1, 1, 1, Buffer.alloc(32)]] }));
    expect((await loadChecksumCache(stateDir, DS, 'rp-1', LAYOUT))?.get('a')?.hashes).toHaveLength(1);
  });

  it('is ignored when the cache path is unreadable', async () => {
    await mkdir(cacheFile(), { recursive: true }); // a directory where the file should be
    expect(await loadChecksumCache(stateDir, DS, 'rp-1', LAYOUT)).toBeUndefined();
  });

  it('a load that starts while the save is in progress waits for it and finds the new cache', async () => {
    await saveChecksumCache(stateDir, DS, 'rp-1', LAYOUT, sample());
    // The next backup starts right after the server reported rp-2, while its cache is written.
    const saving = saveChecksumCache(stateDir, DS, 'rp-2', LAYOUT, sample());
    const loaded = await loadChecksumCache(stateDir, DS, 'rp-2', LAYOUT);
    expect(loaded?.size).toBe(sample().size);
    await saving;
  });

  it('refuses datasource ids that are not safe file names', async () => {
    for (const id of ['', '.', '..', '../x', 'a/b', '.hidden', 'a\0b', 'x'.repeat(201)]) {
      await expect(
        saveChecksumCache(stateDir, id, 'rp', LAYOUT, new Map()),
        JSON.stringify(id),
      ).rejects.toThrow(/cache file name/);
      await expect(loadChecksumCache(stateDir, id, 'rp', LAYOUT)).rejects.toThrow(/cache file name/);
    }
    expect(await readdir(stateDir)).toEqual([]);
  });
});
