import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import type { ManifestError } from './manifest-store.ts';
import { ManifestStore } from './manifest-store.ts';

/** Writes to temp files fail with ENOSPC once `fault.full` is set; the rest is the real filesystem. */
const fault = vi.hoisted(() => ({ full: false }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  const open: typeof actual.open = async (...args) => {
    const fh = await actual.open(...args);
    if (String(args[0]).endsWith('.tmp')) {
      const real = fh.writeFile.bind(fh);
      fh.writeFile = async (...w: Parameters<typeof real>) => {
        if (fault.full) {
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), {
            code: 'ENOSPC',
            errno: -28,
          });
        }
        return real(...w);
      };
    }
    return fh;
  };
  return { ...actual, open };
});

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'holdfast-manifest-enospc-'));
  fault.full = false;
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

it('a full disk fails the append with STORE_FULL, blocks commit, and discard cleans up', async () => {
  const store = await ManifestStore.open(dir);
  const w = await store.createWriter('rp-full');
  const entry = { type: 'dir' as const, path: 'a', mode: 0o755, uid: 0, gid: 0, mtimeMs: 0 };
  await w.append([entry]);
  fault.full = true;
  const err = (await w.append([entry]).catch((e) => e)) as ManifestError;
  expect(err.code).toBe('STORE_FULL');
  expect(err.message).toContain('disk full');
  expect(err.message).toContain('rp-full');
  fault.full = false;
  expect(((await w.commit().catch((e) => e)) as ManifestError).code).toBe('STORE_FULL');
  await w.discard();
  expect(await store.exists('rp-full')).toBe(false);
  expect(await readdir(path.join(dir, 'manifests', 'tmp'))).toEqual([]);
});
