import { createHash, randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type VaultBackend, type VaultFolder, VaultNotFoundError } from './backend.ts';

/**
 * The contract of backend.ts as one vitest suite, registered once per backend kind
 * (backends.test.ts runs it for local, Azure via Azurite and S3 via s3rver). Each test gets a
 * fresh, empty vault from `open` (a new folder, container prefix or bucket prefix).
 */
export interface ConformanceTarget {
  backend: VaultBackend;
  /** What `backend.name` starts with: 'local:', 'azure:', 's3:'. */
  scheme: string;
  /** Strings that must appear neither in `name` nor in any error message (keys, secrets). */
  secrets: string[];
  /** The backend's list page size if it pages (opened small so tests cross page boundaries). */
  listPageSize?: number;
  /**
   * Starts a save of `data` at `path` into the same storage and breaks it off part-way: the
   * connection cut in the middle of the upload (remote kinds), the saving process killed in
   * the middle of the write (local). Resolves when that attempt is over. `mustBeAbsent`: the
   * break is known to have come before the whole body was sent, so the object must not exist;
   * otherwise it may exist, but only whole.
   */
  breakASave: (path: string, data: Buffer) => Promise<{ mustBeAbsent: boolean }>;
  close?(): Promise<void>;
}

export function backendConformance(label: string, open: () => Promise<ConformanceTarget>): void {
  describe(`vault backend conformance: ${label}`, () => {
    let t: ConformanceTarget;
    let b: VaultBackend;
    beforeEach(async () => {
      t = await open();
      b = t.backend;
    });
    afterEach(async () => {
      await t?.close?.();
    });

    it('has a name of its kind that holds no secret', () => {
      expect(b.name.startsWith(t.scheme)).toBe(true);
      for (const s of t.secrets) expect(b.name).not.toContain(s);
    });

    it('round-trips small objects, an empty one, and an overwritten config', async () => {
      const key = id();
      await b.save(`keys/${key}`, Buffer.from('{"kdf":"scrypt"}'));
      expect((await b.load(`keys/${key}`)).toString()).toBe('{"kdf":"scrypt"}');
      expect(await b.stat(`keys/${key}`)).toEqual({ size: 16 });

      const empty = id();
      await b.save(`locks/${empty}`, Buffer.alloc(0));
      expect((await b.load(`locks/${empty}`)).length).toBe(0);
      expect(await b.stat(`locks/${empty}`)).toEqual({ size: 0 });

      await b.save('config', Buffer.from('first'));
      await b.save('config', Buffer.from('second version'));
      expect((await b.load('config')).toString()).toBe('second version');
      expect(await b.stat('config')).toEqual({ size: 14 });
    });

    it('round-trips a 20 MiB pack and loads byte ranges of it', async () => {
      const size = 20 * 1024 * 1024;
      const data = randomBytes(size);
      const pack = packId();
      await b.save(pack, data);
      expect(await b.stat(pack)).toEqual({ size });
      const whole = await b.load(pack);
      expect(whole.length).toBe(size);
      expect(sha(whole)).toBe(sha(data));

      const ranges = [
        { offset: 0, length: 1 },
        { offset: 0, length: 4096 },
        { offset: 12_345_678, length: 1_000_003 }, // spans what a chunked transfer would split
        { offset: size - 37, length: 37 }, // up to the exact end
        { offset: size - 1, length: 1 },
        { offset: 100, length: 0 },
      ];
      for (const r of ranges) {
        const got = await b.load(pack, r);
        expect(got.length, `range ${r.offset}+${r.length}`).toBe(r.length);
        expect(
          got.equals(data.subarray(r.offset, r.offset + r.length)),
          `range ${r.offset}+${r.length}`,
        ).toBe(true);
      }
    });

    it('rejects a range that runs past the end of the object', async () => {
      const p = `index/${id()}`;
      await b.save(p, Buffer.from('0123456789'));
      await expect(b.load(p, { offset: 5, length: 6 })).rejects.toThrow();
      await expect(b.load(p, { offset: 10, length: 1 })).rejects.toThrow();
      expect((await b.load(p, { offset: 5, length: 5 })).toString()).toBe('56789');
    });

    it('reports a missing object: stat undefined, load VaultNotFoundError naming the path', async () => {
      const p = `snapshots/${id()}`;
      expect(await b.stat(p)).toBeUndefined();
      expect(await b.stat(packId())).toBeUndefined();
      expect(await b.stat('config')).toBeUndefined();
      for (const attempt of [() => b.load(p), () => b.load(p, { offset: 0, length: 10 })]) {
        const err = await attempt().then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(VaultNotFoundError);
        expect((err as VaultNotFoundError).code).toBe('VAULT_NOT_FOUND');
        expect((err as Error).message).toContain(p);
      }
    });

    it('lists each folder recursively with sizes, and nothing of the other folders', async () => {
      const saved = new Map<string, number>();
      const put = async (path: string, len: number) => {
        await b.save(path, randomBytes(len));
        saved.set(path, len);
      };
      await put('config', 7);
      await put(`keys/${id()}`, 11);
      await put(`snapshots/${id()}`, 12);
      await put(`snapshots/${id()}`, 13);
      await put(`index/${id()}`, 14);
      await put(packId('ab'), 15);
      await put(packId('ab'), 16);
      await put(packId('cd'), 17);
      await put(packId('00'), 18);
      await put(packId('ff'), 19);

      for (const folder of ['data', 'index', 'snapshots', 'keys', 'locks'] as const) {
        const expected = [...saved].filter(([p]) => p.startsWith(`${folder}/`)).sort(byPath);
        expect(await listAll(b, folder), folder).toEqual(expected);
      }
    });

    it('lists across page boundaries without losing or repeating objects', async () => {
      const pageSize = t.listPageSize ?? 10;
      const n = pageSize * 3 + 2;
      const saved: [string, number][] = [];
      const paths = Array.from({ length: n }, (_, i) => (i % 2 === 0 ? `index/${id()}` : packId()));
      await inBatches(paths, 16, async (p, i) => {
        await b.save(p, Buffer.alloc(i % 5, i));
        saved.push([p, i % 5]);
      });
      const all = [...(await listAll(b, 'index')), ...(await listAll(b, 'data'))].sort(byPath);
      expect(all).toEqual(saved.sort(byPath));
    });

    it('removes objects, and removing a missing one succeeds', async () => {
      const a = `keys/${id()}`;
      const c = packId();
      await b.save(a, Buffer.from('a'));
      await b.save(c, Buffer.from('c'));
      await b.remove(a);
      expect(await b.stat(a)).toBeUndefined();
      await expect(b.load(a)).rejects.toBeInstanceOf(VaultNotFoundError);
      expect(await listAll(b, 'keys')).toEqual([]);
      await b.remove(a);
      await b.remove(`locks/${id()}`);
      await b.remove(c);
      expect(await listAll(b, 'data')).toEqual([]);
    });

    it('refuses paths outside the repository layout', async () => {
      for (const bad of [
        '../config',
        '/config',
        'data/ab/../../config',
        'data/zz/x',
        `data/${id()}`,
        'tmp/x',
        '',
      ]) {
        await expect(b.save(bad, Buffer.from('x')), bad).rejects.toThrow();
        await expect(b.load(bad), bad).rejects.toThrow();
        await expect(b.remove(bad), bad).rejects.toThrow();
      }
    });

    it('never shows a save in flight partially: stat and list see nothing or the whole object', async () => {
      const size = 16 * 1024 * 1024;
      const pack = packId();
      const data = randomBytes(size);
      let done = false;
      const saving = b.save(pack, data).finally(() => {
        done = true;
      });
      const seen = new Set<string>();
      while (!done) {
        const st = await b.stat(pack);
        seen.add(st ? String(st.size) : 'absent');
        for (const [, sz] of await listAll(b, 'data')) seen.add(String(sz));
      }
      await saving;
      for (const s of seen) expect(['absent', String(size)]).toContain(s);
      expect(await listAll(b, 'data')).toEqual([[pack, size]]);
    });

    it('leaves no partial object behind a save that broke off', async () => {
      const pack = packId();
      const other = packId();
      await b.save(other, Buffer.from('already there'));
      const data = randomBytes(32 * 1024 * 1024);
      const { mustBeAbsent } = await t.breakASave(pack, data);
      const st = await b.stat(pack);
      if (mustBeAbsent || st === undefined) {
        expect(st).toBeUndefined();
        expect(await listAll(b, 'data')).toEqual([[other, 13]]);
        await expect(b.load(pack)).rejects.toBeInstanceOf(VaultNotFoundError);
      } else {
        // The break came too late to catch the save in the middle: then it must be whole.
        expect(st).toEqual({ size: data.length });
        expect(sha(await b.load(pack))).toBe(sha(data));
        expect(await listAll(b, 'data')).toEqual(
          [
            [other, 13],
            [pack, data.length],
          ].sort((x, y) => byPath(x as never, y as never)),
        );
      }
    });
  });
}

export function id(): string {
  return randomBytes(32).toString('hex');
}

/** data/<first two hex>/<id>, optionally in a given subfolder. */
export function packId(sub?: string): string {
  const h = id();
  const full = sub ? sub + h.slice(2) : h;
  return `data/${full.slice(0, 2)}/${full}`;
}

export async function listAll(b: VaultBackend, folder: VaultFolder): Promise<[string, number][]> {
  const out: [string, number][] = [];
  for await (const o of b.list(folder)) out.push([o.path, o.size]);
  return out.sort(byPath);
}

function byPath(a: [string, number], b: [string, number]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}

function sha(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

async function inBatches<T>(
  items: T[],
  size: number,
  fn: (item: T, index: number) => Promise<void>,
): Promise<void> {
  for (let i = 0; i < items.length; i += size) {
    await Promise.all(items.slice(i, i + size).map((item, j) => fn(item, i + j)));
  }
}
