import { mkdtemp, readdir, readFile, rm, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Entry } from '../../protocol/entry.ts';
import { blockHash } from '../../protocol/hash.ts';
import { encodeRecord, MANIFEST_MAGIC } from './manifest-format.ts';
import { ManifestError, ManifestStore } from './manifest-store.ts';

let dir: string;
let store: ManifestStore;
const manifests = () => path.join(dir, 'manifests');

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'holdfast-manifests-'));
  store = await ManifestStore.open(dir);
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const base = { mode: 0o644, uid: 1000, gid: 1000, mtimeMs: 1_700_000_000_123.5 };

function batch(n: number, from: number): Entry[] {
  return Array.from({ length: n }, (_, i): Entry => {
    const k = from + i;
    if (k % 10 === 0) return { type: 'dir', path: `d${k}`, ...base, mode: 0o755 };
    if (k % 10 === 1) return { type: 'symlink', path: `d${k - 1}/link`, ...base, target: '../elsewhere' };
    const hashes = Array.from({ length: k % 4 }, (_, j) => blockHash(Buffer.from(`${k}:${j}`)));
    return { type: 'file', path: `d${k - (k % 10)}/f${k}.txt`, size: k * 1000, ...base, hashes };
  });
}

async function readAll(rpId: string): Promise<Entry[][]> {
  const out: Entry[][] = [];
  for await (const b of store.read(rpId)) out.push(b);
  return out;
}

async function errorOf(p: Promise<unknown>): Promise<ManifestError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ManifestError);
  return err as ManifestError;
}

async function committed(rpId: string, batches: Entry[][]): Promise<string> {
  const w = await store.createWriter(rpId);
  for (const b of batches) await w.append(b);
  await w.commit();
  return path.join(manifests(), `${rpId}.manifest`);
}

describe('write, commit, read', () => {
  it('round-trips several batches in order, hashes as Buffers', async () => {
    const batches = [batch(500, 0), batch(1, 500), batch(1200, 501), batch(37, 1701)];
    const w = await store.createWriter('rp-1');
    for (const b of batches) await w.append(b);
    expect(w.entryCount).toBe(1738);
    await w.commit();
    expect(await store.exists('rp-1')).toBe(true);
    const read = await readAll('rp-1');
    expect(read).toEqual(batches);
    const file = read[0]!.find((e) => e.type === 'file' && e.hashes.length > 0);
    expect(file?.type === 'file' && Buffer.isBuffer(file.hashes[0])).toBe(true);
    expect(await readdir(path.join(manifests(), 'tmp'))).toEqual([]);
  });

  it('writes the documented format: HFM1, then [u32 BE length][zstd msgpack] records', async () => {
    const file = await committed('golden', [batch(3, 0), batch(2, 3)]);
    const bytes = await readFile(file);
    expect(bytes.subarray(0, 4).toString('latin1')).toBe('HFM1');
    const first = bytes.readUInt32BE(4);
    expect(bytes.subarray(8, 12).toString('hex')).toBe('28b52ffd'); // zstd frame magic
    const second = bytes.readUInt32BE(8 + first);
    expect(8 + first + 4 + second).toBe(bytes.length);
  });

  it('writes the golden bytes of docs/chunk-store.md', async () => {
    const entry: Entry = { type: 'dir', path: 'a', mode: 493, uid: 0, gid: 0, mtimeMs: 0 };
    const file = await committed('golden-doc', [[entry]]);
    expect((await readFile(file)).toString('hex')).toBe(
      '48464d31' +
        '00000038' +
        '28b52ffd202f790100' +
        '91de0006a474797065a3646972a470617468a161a46d6f6465cd01eda375696400a367696400a76d74696d654d7300',
    );
  });

  it('concurrent appends are written whole and in call order', async () => {
    const batches = Array.from({ length: 20 }, (_, i) => batch(50, i * 50));
    const w = await store.createWriter('rp-concurrent');
    await Promise.all(batches.map((b) => w.append(b)));
    await w.commit();
    expect(await readAll('rp-concurrent')).toEqual(batches);
  });

  it('an uncommitted writer leaves no manifest visible', async () => {
    const w = await store.createWriter('rp-open');
    await w.append(batch(10, 0));
    expect(await store.exists('rp-open')).toBe(false);
    expect((await errorOf(readAll('rp-open'))).code).toBe('MANIFEST_MISSING');
    expect((await readdir(manifests())).sort()).toEqual(['tmp']);
    expect(await readdir(path.join(manifests(), 'tmp'))).toHaveLength(1);
    await w.discard();
  });

  it('discard leaves nothing, twice is fine, and after commit it is a no-op', async () => {
    const w = await store.createWriter('rp-x');
    await w.append(batch(10, 0));
    await w.discard();
    await w.discard();
    expect(await readdir(manifests())).toEqual(['tmp']);
    expect(await readdir(path.join(manifests(), 'tmp'))).toEqual([]);
    expect((await errorOf(w.append(batch(1, 0)))).code).toBe('MANIFEST_STATE');
    expect((await errorOf(w.commit())).code).toBe('MANIFEST_STATE');

    const c = await store.createWriter('rp-y');
    await c.append(batch(3, 0));
    await c.commit();
    await c.discard();
    expect(await readAll('rp-y')).toEqual([batch(3, 0)]);
    expect((await errorOf(c.append(batch(1, 0)))).code).toBe('MANIFEST_STATE');
  });

  it('a manifest with no batches reads as no batches', async () => {
    await committed('empty', [[]]);
    expect(await readAll('empty')).toEqual([]);
  });

  it('remove is idempotent; an id is never reused', async () => {
    await committed('rp-r', [batch(2, 0)]);
    expect((await errorOf(store.createWriter('rp-r'))).code).toBe('MANIFEST_EXISTS');
    await store.remove('rp-r');
    await store.remove('rp-r');
    expect(await store.exists('rp-r')).toBe(false);
  });
});

describe('damage and bad ids', () => {
  it('a truncated manifest is a clear MANIFEST_CORRUPT error', async () => {
    const file = await committed('rp-cut', [batch(100, 0), batch(100, 100)]);
    const size = (await readFile(file)).length;
    for (const cut of [size - 1, size - 200, 6, 2]) {
      await truncate(file, cut);
      const err = await errorOf(readAll('rp-cut'));
      expect(err.code).toBe('MANIFEST_CORRUPT');
      expect(err.message).toContain(file);
      expect(err.message).toMatch(/truncated|too short/);
    }
  });

  it('bad magic, a wild length and undecodable payload are MANIFEST_CORRUPT', async () => {
    const file = await committed('rp-bad', [batch(10, 0)]);
    const good = await readFile(file);
    const cases = [
      Buffer.concat([Buffer.from('HFM2'), good.subarray(4)]),
      Buffer.concat([MANIFEST_MAGIC, Buffer.from([0xff, 0xff, 0xff, 0xff]), good.subarray(8)]),
      Buffer.concat([good.subarray(0, 8), Buffer.alloc(good.length - 8, 0x41)]),
    ];
    for (const bytes of cases) {
      await writeFile(file, bytes);
      expect((await errorOf(readAll('rp-bad'))).code).toBe('MANIFEST_CORRUPT');
    }
  });

  it('entries that fail the schema never reach the reader', async () => {
    const file = path.join(manifests(), 'rp-evil.manifest');
    const evil = [{ ...batch(1, 2)[0], path: '../../etc/shadow' }] as Entry[];
    await writeFile(file, Buffer.concat([MANIFEST_MAGIC, encodeRecord(batch(5, 0)), encodeRecord(evil)]));
    const seen: Entry[][] = [];
    const err = await errorOf(
      (async () => {
        for await (const b of store.read('rp-evil')) seen.push(b);
      })(),
    );
    expect(err.code).toBe('MANIFEST_CORRUPT');
    expect(err.message).toContain('record 1');
    expect(err.message).toContain('path');
    expect(seen).toEqual([batch(5, 0)]);
  });

  it('refuses unsafe recovery point ids', async () => {
    for (const id of ['../x', 'a/b', '', 'a.manifest', 'x'.repeat(101), 'rp 1']) {
      expect((await errorOf(store.createWriter(id))).code).toBe('MANIFEST_BAD_ID');
      expect((await errorOf(readAll(id))).code).toBe('MANIFEST_BAD_ID');
      expect((await errorOf(store.exists(id))).code).toBe('MANIFEST_BAD_ID');
      expect((await errorOf(store.remove(id))).code).toBe('MANIFEST_BAD_ID');
    }
  });

  it('open removes temp files a crash left, not ones another process may be writing', async () => {
    const tmp = path.join(manifests(), 'tmp');
    await writeFile(path.join(tmp, 'rp-crashed.1.abc.tmp'), 'HFM1partial');
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000);
    await utimes(path.join(tmp, 'rp-crashed.1.abc.tmp'), twoHoursAgo, twoHoursAgo);
    await writeFile(path.join(tmp, 'rp-writing.2.def.tmp'), 'HFM1being-written');
    await ManifestStore.open(dir);
    expect(await readdir(tmp)).toEqual(['rp-writing.2.def.tmp']);
  });
});
