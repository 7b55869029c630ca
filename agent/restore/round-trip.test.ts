import type { Stats } from 'node:fs';
import {
  chmod,
  lstat,
  lutimes,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Entry } from '../../protocol/entry.ts';
import { hashHex } from '../../protocol/hash.ts';
import { collectScan } from '../backup/files-scanner.test-helpers.ts';
import { RestoreWriter } from './restore-writer.ts';

const BS = 64 * 1024;
let base: string;
let source: string;
let target: string;

beforeEach(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'holdfast-roundtrip-'));
  source = path.join(base, 'source');
  target = path.join(base, 'target');
});
afterEach(async () => {
  // Restored read-only directories must not stop the clean-up of an unprivileged run.
  await chmodTree(base).catch(() => {});
  await rm(base, { recursive: true, force: true });
});

async function chmodTree(dir: string): Promise<void> {
  await chmod(dir, 0o755);
  for (const e of await readdir(dir, { withFileTypes: true })) {
    if (e.isDirectory()) await chmodTree(path.join(dir, e.name));
  }
}

function content(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 13 + seed * 101 + (i >> 9)) & 0xff;
  return b;
}

/** A tree with the awkward cases: block boundaries, special modes, odd times, empty dirs. */
async function makeSource(): Promise<void> {
  await mkdir(path.join(source, 'docs', 'empty', 'emptier'), { recursive: true });
  await mkdir(path.join(source, 'locked'));
  const sizes = [0, 1, BS - 1, BS, 2 * BS + 5];
  for (const [i, size] of sizes.entries())
    await writeFile(path.join(source, 'docs', `f${i}`), content(size, i));
  await writeFile(path.join(source, 'locked', 'secret'), 'inside a read-only directory');
  await writeFile(path.join(source, 'run.sh'), '#!/bin/sh\n');
  await writeFile(path.join(source, 'dup'), content(BS, 3)); // same block as docs/f3
  // Runs of zeros inside files are cut and stored like any other content.
  const zero = Buffer.alloc(BS);
  await writeFile(
    path.join(source, 'sparse'),
    Buffer.concat([zero, content(BS, 7), zero, content(BS, 8), Buffer.alloc(9)]),
  );
  await writeFile(path.join(source, 'zeros'), Buffer.alloc(2 * BS + 3));
  await symlink('docs/f4', path.join(source, 'rel-link'));
  await symlink('/nonexistent/absolute', path.join(source, 'abs-link'));
  await chmod(path.join(source, 'run.sh'), 0o2755);
  await chmod(path.join(source, 'docs', 'f1'), 0o400);
  await utimes(path.join(source, 'docs', 'f2'), 1_234_567_890.123, 1_234_567_890.123);
  await lutimes(path.join(source, 'rel-link'), 1_500_000_000.5, 1_500_000_000.5);
  await utimes(path.join(source, 'docs', 'empty'), 1_000_000_000, 1_000_000_000);
  await chmod(path.join(source, 'docs', 'empty'), 0o750);
  await chmod(path.join(source, 'locked'), 0o555);
}

async function backupAndRestore(): Promise<{ entries: Entry[]; totals: { files: number; bytes: number } }> {
  const { run } = await collectScan({ root: source, blockSize: BS });
  expect(run.warnings).toEqual([]);
  const w = await RestoreWriter.open(target, BS);
  for (const entry of run.entries) {
    await w.beginEntry(entry);
    if (entry.type === 'file')
      for (const h of entry.hashes) if (h) await w.writeBlock(run.store.get(hashHex(h))!);
  }
  return { entries: run.entries, totals: await w.finish() };
}

/** What must survive a round trip, per path. Times compared to the microsecond. */
async function describeTree(root: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const rel of (await readdir(root, { recursive: true })).sort()) {
    const p = path.join(root, rel);
    const st: Stats = await lstat(p);
    const common = {
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtimeUs: Math.round(st.mtimeMs * 1000),
    };
    if (st.isSymbolicLink()) out[rel] = { ...common, mode: undefined, link: await readlink(p) };
    else if (st.isDirectory()) out[rel] = { ...common, dir: true };
    else out[rel] = { ...common, sha: (await readFile(p)).toString('hex').slice(0, 64), size: st.size };
  }
  return out;
}

describe('scan then restore', () => {
  it('gives back byte-identical content, modes, times, symlinks and empty dirs', async () => {
    await makeSource();
    const { entries, totals } = await backupAndRestore();
    const want = await describeTree(source);
    expect(await describeTree(target)).toEqual(want);
    expect(Object.keys(want)).toHaveLength(entries.length);
    expect(totals.files).toBe(entries.filter((e) => e.type === 'file').length);
    for (const e of entries) if (e.type === 'file') expect(e.hashes, e.path).not.toContain(null);
    for (const e of entries) {
      if (e.type === 'file') {
        expect(
          (await readFile(path.join(target, e.path))).equals(await readFile(path.join(source, e.path))),
        ).toBe(true);
      }
    }
  });

  it('restores over an existing, changed copy of the tree', async () => {
    await makeSource();
    await backupAndRestore();
    await writeFile(path.join(target, 'docs', 'f4'), 'scribbled over');
    await rm(path.join(target, 'rel-link'));
    await writeFile(path.join(target, 'rel-link'), 'now a file');
    await chmod(path.join(target, 'docs', 'empty'), 0o700);
    await backupAndRestore();
    expect(await describeTree(target)).toEqual(await describeTree(source));
  });
});
