import { execFileSync } from 'node:child_process';
import {
  appendFile,
  chmod,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  symlink,
  truncate,
  unlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Entry } from '../../protocol/entry.ts';
import { MAX_BLOCK_SIZE } from '../../protocol/version.ts';
import { chunkBounds } from './content-chunker.ts';
import { cutInMemory, pseudoRandom } from './content-chunker.test-helpers.ts';
import { type CollectHooks, type CollectOptions, collectScan, sha256 } from './files-scanner.test-helpers.ts';

const BS = 64 * 1024;
let root: string;

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'holdfast-scan-'));
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Distinct, non-repeating content, so a block in the wrong place changes a hash. */
function content(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return b;
}

const SIZES: Record<string, number> = {
  'a.bin': 0,
  'b.bin': 1,
  'c.bin': BS - 1,
  'd.bin': BS,
  'e.bin': 2 * BS + 5,
};
const TEXTS: Record<string, string> = {
  'nested/x.txt': 'hello',
  'nested-file': "'-' sorts before '/', yet a directory's children come right after it",
  'Z.txt': 'capital letters sort first in byte order',
};

async function makeTree(): Promise<void> {
  let seed = 0;
  for (const [name, size] of Object.entries(SIZES))
    await writeFile(path.join(root, name), content(size, seed++));
  await mkdir(path.join(root, 'empty'));
  await mkdir(path.join(root, 'nested', 'deeper', 'deepest'), { recursive: true });
  for (const [name, text] of Object.entries(TEXTS)) await writeFile(path.join(root, name), text);
  await symlink('e.bin', path.join(root, 'link'));
  await chmod(path.join(root, 'b.bin'), 0o4751);
}

function scan(extra: Partial<CollectOptions> = {}, hooks: CollectHooks = {}) {
  return collectScan({ root, blockSize: BS, ...extra }, hooks);
}

const hex = (hashes: (Uint8Array | null)[]) => hashes.map((h) => (h ? Buffer.from(h).toString('hex') : null));

const cuts = (data: Buffer) => cutInMemory(data, BS);

/** The hashes the consumer must end up with for `data`. */
function chunkHashes(data: Buffer): string[] {
  return cuts(data).map((b) => sha256(b).toString('hex'));
}

function fileEntry(entries: Entry[], p: string) {
  const e = entries.find((x) => x.path === p);
  if (e?.type !== 'file') throw new Error(`${p} is not a file entry`);
  return e;
}

describe('scanFiles', () => {
  it('walks depth-first in byte order and submits each block before its entry', async () => {
    await makeTree();
    const { run, result } = await scan();
    expect(run.warnings).toEqual([]);
    expect(run.restarts).toBe(0);
    expect(run.entries.map((e) => e.path)).toEqual([
      'Z.txt',
      'a.bin',
      'b.bin',
      'c.bin',
      'd.bin',
      'e.bin',
      'empty',
      'link',
      'nested',
      'nested/deeper',
      'nested/deeper/deepest',
      'nested/x.txt',
      'nested-file',
    ]);
    let seed = 0;
    for (const [name, size] of Object.entries(SIZES)) {
      const e = fileEntry(run.entries, name);
      expect(e.size).toBe(size);
      expect(hex(e.hashes)).toEqual(chunkHashes(content(size, seed++)));
      const source = run.sources.get(name);
      expect(source?.kind).toBe('read');
      if (source?.kind === 'read') {
        expect(source.stamp.size).toBe(size);
        expect(source.previous).toBeUndefined();
      }
    }
    expect(run.entries.find((e) => e.path === 'b.bin')?.mode).toBe(0o4751);
    const link = run.entries.find((e) => e.path === 'link');
    expect(link).toMatchObject({ type: 'symlink', target: 'e.bin' });
    expect(run.entries.find((e) => e.path === 'empty')?.type).toBe('dir');
    expect(run.sources.get('empty')).toBeUndefined();

    // The blocks of e.bin come right before its entry, in order.
    const eBlocks = cuts(content(SIZES['e.bin']!, 4)).map((b) => `block ${b.length}`);
    const at = run.events.indexOf('entry e.bin');
    expect(run.events.slice(at - eBlocks.length - 1, at)).toEqual(['entry d.bin', ...eBlocks]);
    // Each block owns its memory, so a consumer may keep or transfer it.
    for (const b of run.blocks) expect(b.byteOffset === 0 && b.buffer.byteLength === b.length).toBe(true);

    const sizes = [...Object.values(SIZES), ...Object.values(TEXTS).map((t) => Buffer.byteLength(t))];
    const fileBytes = sizes.reduce((a, b) => a + b, 0);
    expect(result.files).toBe(8);
    expect(result.bytes).toBe(fileBytes);
    expect(result.bytesScanned).toBe(fileBytes);
    expect(result.inconsistent).toEqual([]);
    expect([...run.cache.keys()].sort()).toEqual(
      run.entries
        .filter((e) => e.type === 'file')
        .map((e) => e.path)
        .sort(),
    );
  });

  it('reuses cached hashes for unchanged files and re-reads a modified one', async () => {
    await makeTree();
    const first = await scan();
    const again = await scan({ cache: first.run.cache });
    expect(again.run.blocks).toEqual([]);
    expect(again.result.bytesScanned).toBe(0);
    expect(again.run.entries).toEqual(first.run.entries);
    expect(again.run.cache.size).toBe(first.run.cache.size);
    expect(again.run.sources.get('e.bin')).toEqual({ kind: 'cached', cached: first.run.cache.get('e.bin') });

    // Same size, new content and an old mtime: ctime still gives the change away.
    const e = path.join(root, 'e.bin');
    await writeFile(e, content(2 * BS + 5, 99));
    await utimes(e, 1_000_000, 1_000_000);
    const third = await scan({ cache: again.run.cache });
    expect(third.run.blocks.length).toBe(cuts(content(2 * BS + 5, 99)).length);
    expect(third.result.bytesScanned).toBe(2 * BS + 5);
    expect(hex(fileEntry(third.run.entries, 'e.bin').hashes)).toEqual(chunkHashes(content(2 * BS + 5, 99)));
    // The consumer learns what the file was cached as, e.g. to know which blocks are old.
    const source = third.run.sources.get('e.bin');
    expect(source?.kind === 'read' && source.previous).toEqual(again.run.cache.get('e.bin'));
    expect(third.run.sources.get('d.bin')?.kind).toBe('cached');
  });

  it('cuts a file by content, so a range copied to an unaligned offset costs no new blocks', async () => {
    // Fixed pseudo-random content: where the cuts of the two copies fall in step is then the
    // same on every run.
    const copied = pseudoRandom('copied', 24 * BS);
    const data = Buffer.concat([copied, pseudoRandom('between', BS + 1234), Buffer.alloc(5 * BS), copied]);
    await writeFile(path.join(root, 'big'), data);
    const { run, result } = await scan();
    expect(result.bytesScanned).toBe(data.length);
    const hashes = hex(fileEntry(run.entries, 'big').hashes);
    expect(hashes).toEqual(chunkHashes(data));
    expect(hashes).not.toContain(null); // zero runs are ordinary blocks in files
    const { min, max } = chunkBounds(BS, MAX_BLOCK_SIZE);
    for (const b of run.blocks.slice(0, -1)) expect(b.length).toBeGreaterThanOrEqual(min);
    for (const b of run.blocks) expect(b.length).toBeLessThanOrEqual(max);
    // Once its cuts fall in step with the first's (a few blocks in), the second copy is blocks
    // already seen: the distinct blocks hold much less than the file.
    const distinctBytes = [...run.store.values()].reduce((n, b) => n + b.length, 0);
    expect(distinctBytes).toBeLessThan(data.length - 0.75 * copied.length);
    const firstCopy = new Set(chunkHashes(copied));
    expect(hashes.at(-1)).toBe(chunkHashes(copied).at(-1));
    expect(hashes.slice(-(firstCopy.size >> 1)).every((h) => firstCopy.has(h!))).toBe(true);
    const again = await scan({ cache: run.cache });
    expect(again.result.bytesScanned).toBe(0);
    expect(hex(fileEntry(again.run.entries, 'big').hashes)).toEqual(hashes);
  });

  it('submits each block of a re-read file with the cached hash of its position', async () => {
    const data = pseudoRandom('rewritten', 16 * BS);
    const file = path.join(root, 'big');
    await writeFile(file, data);
    const first = await scan();
    expect(
      first.run.previous.every((p) => p === null),
      'no cache: nothing to compare with',
    ).toBe(true);
    const before = fileEntry(first.run.entries, 'big').hashes;
    // Rewritten in place in the middle (same length): the cuts fall in step again after it.
    pseudoRandom('new', BS).copy(data, 7 * BS + 123);
    await writeFile(file, data);
    const again = await scan({ cache: first.run.cache });
    expect(again.run.previous).toEqual(
      before
        .slice(0, again.run.blocks.length)
        .concat(Array(Math.max(0, again.run.blocks.length - before.length)).fill(null)),
    );
    // Most blocks still have their position's old hash: those are the ones not compressed.
    const after = hex(fileEntry(again.run.entries, 'big').hashes);
    const old = hex(before);
    const same = after.filter((h, i) => h !== null && old[i] === h).length;
    expect(same).toBeGreaterThan(after.length / 2);
    expect(same).toBeLessThan(after.length);
  });

  it('warns about a file that vanishes before it is read and goes on', async () => {
    await makeTree();
    const { run, result } = await scan({
      beforeRead: async (rel) => {
        if (rel === 'd.bin') await unlink(path.join(root, rel));
      },
    });
    expect(run.warnings).toHaveLength(1);
    expect(run.warnings[0]).toContain(path.join(root, 'd.bin'));
    expect(run.warnings[0]).toContain('vanished before it was read');
    expect(run.warnings[0]).toContain('ENOENT');
    expect(run.entries.map((e) => e.path)).not.toContain('d.bin');
    expect(run.entries.map((e) => e.path)).toContain('nested-file');
    expect(result.files).toBe(7);
    expect(run.cache.has('d.bin')).toBe(false);
  });

  it('skips a FIFO with a warning instead of blocking on it', async () => {
    execFileSync('mkfifo', [path.join(root, 'pipe')]);
    await writeFile(path.join(root, 'z'), 'after');
    const { run } = await scan();
    expect(run.warnings).toEqual([`${path.join(root, 'pipe')}: skipped, a FIFO cannot be backed up`]);
    expect(run.entries.map((e) => e.path)).toEqual(['z']);
  });

  it('reads a file again when it grows while being read; the entry is its final content', async () => {
    await writeFile(path.join(root, 'a'), 'before');
    const f = path.join(root, 'f');
    await writeFile(f, content(BS + 1, 4));
    await writeFile(path.join(root, 'g'), 'after');
    let reading = '';
    let appended = false;
    const { run, result } = await scan(
      {
        beforeRead: async (rel) => {
          reading = rel;
        },
      },
      {
        // The first block submitted for f appends to it: size and times move mid-read.
        afterSubmit: async () => {
          if (reading !== 'f' || appended) return;
          appended = true;
          await appendFile(f, content(BS, 5));
        },
      },
    );
    expect(appended).toBe(true);
    expect(run.restarts).toBe(1);
    const final = Buffer.concat([content(BS + 1, 4), content(BS, 5)]);
    const e = fileEntry(run.entries, 'f');
    expect(e.size).toBe(final.length);
    expect(hex(e.hashes)).toEqual(chunkHashes(final));
    // First attempt: the blocks it saw, abandoned; second attempt: those of the final content.
    const at = run.events.indexOf('entry f');
    const blocksOf = (b: Buffer) => cuts(b).map((c) => `block ${c.length}`);
    expect(run.events.slice(run.events.indexOf('entry a') + 1, at)).toEqual([
      ...blocksOf(content(BS + 1, 4)),
      'restart',
      ...blocksOf(final),
    ]);
    expect(run.cache.get('f')?.size).toBe(final.length);
    expect(result.inconsistent).toEqual([]);
    expect(run.warnings).toEqual([]);
    expect(result.bytes).toBe(final.length + 'before'.length + 'after'.length);
  });

  it('reads a file again when it shrinks while being read', async () => {
    const f = path.join(root, 'f');
    // Larger than the read window, so the cut lands between two reads of the same attempt.
    await writeFile(f, content(16 * BS, 3));
    let shrunk = false;
    const { run, result } = await scan(
      {},
      {
        afterSubmit: async () => {
          if (shrunk) return;
          shrunk = true;
          await truncate(f, BS + 10);
        },
      },
    );
    expect(run.restarts).toBe(1);
    const e = fileEntry(run.entries, 'f');
    expect(e.size).toBe(BS + 10);
    expect(hex(e.hashes)).toEqual(chunkHashes(content(16 * BS, 3).subarray(0, BS + 10)));
    expect(run.cache.get('f')?.size).toBe(BS + 10);
    expect(result.inconsistent).toEqual([]);
  });

  it('gives up on a file that changes on every read and reports it as inconsistent', async () => {
    await writeFile(path.join(root, 'calm'), content(BS, 1));
    const log = path.join(root, 'log');
    await writeFile(log, content(BS, 2));
    let reading = '';
    let logBlocks = 0;
    const { run, result } = await scan(
      {
        beforeRead: async (rel) => {
          reading = rel;
        },
      },
      {
        afterSubmit: async () => {
          if (reading !== 'log') return;
          logBlocks += 1;
          await appendFile(log, 'more\n');
        },
      },
    );
    expect(result.inconsistent).toEqual(['log']);
    expect(run.restarts).toBe(2);
    expect(run.warnings).toHaveLength(1);
    expect(run.warnings[0]).toContain(log);
    expect(run.warnings[0]).toContain('changed while being read');
    // Backed up as last read: the file's first bytes, as big as the third read found it; every
    // submitted block appended 5 bytes, so the file is now larger than that.
    const e = fileEntry(run.entries, 'log');
    const now = await readFile(log);
    expect(e.size).toBeGreaterThan(BS);
    expect(now.length).toBeGreaterThan(e.size);
    expect(now.length - BS).toBe(5 * logBlocks);
    expect(hex(e.hashes)).toEqual(chunkHashes(now.subarray(0, e.size)));
    // The stamp is the stat before the last read: the next backup reads the file again.
    const source = run.sources.get('log');
    expect(source?.kind === 'read' && source.stamp.size).toBe(e.size);
    expect(fileEntry(run.entries, 'calm').size).toBe(BS);
    expect(run.sources.get('calm')?.kind).toBe('read');
  });

  it('stops when aborted and passes callback errors on', async () => {
    await makeTree();
    const ac = new AbortController();
    let blocks = 0;
    const aborted = scan(
      { signal: ac.signal },
      {
        afterSubmit: async () => {
          blocks += 1;
          ac.abort();
        },
      },
    );
    await expect(aborted).rejects.toThrow(/abort/i);
    expect(blocks).toBe(1);
    await expect(scan({}, { afterEntry: () => Promise.reject(new Error('link down')) })).rejects.toThrow(
      'link down',
    );
  });
});
