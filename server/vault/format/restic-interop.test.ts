import { randomBytes } from 'node:crypto';
import {
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalBackend } from '../backends/local-backend.ts';
import { parseGoTime } from './go-time.ts';
import { sha256Hex } from './id.ts';
import { VaultLockedError } from './locks.ts';
import { VaultRepository } from './repository.ts';
import { describeTree, restic, resticBackupFromStdin, resticOk, tempDir } from './restic-cli.test-helpers.ts';
import { parseHoldfastTags } from './snapshot.ts';
import type { TreeNode } from './tree.ts';
import { DEFAULT_MTIME_MS, type SpecNode, TestVaultWriter } from './vault-writer.test-helpers.ts';

/**
 * The vault's whole point: Debian's real `restic` (0.14) checks and restores what Holdfast
 * writes, and Holdfast reads what restic writes. Nothing here is simulated.
 */

const PASSPHRASE = 'correct horse battery staple 42';
const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;

let work: { dir: string; cleanup: () => Promise<void> };
beforeAll(async () => {
  work = await tempDir('holdfast-vault-interop-');
});
afterAll(async () => {
  await work.cleanup();
});

function sizes(): { big: Buffer; shared: Buffer } {
  const big = randomBytes(2 * MiB + MiB / 2); // three blocks: 1 MiB, 1 MiB, 0.5 MiB, incompressible
  return { big, shared: big.subarray(0, MiB) };
}

/** Compares a restored folder with the spec it was written from: bytes, links, modes, times, owners. */
async function expectRestored(dir: string, spec: Extract<SpecNode, { type: 'dir' }>): Promise<void> {
  for (const [name, child] of Object.entries(spec.children)) {
    const full = path.join(dir, name);
    const st = await lstat(full);
    if (child.type === 'file') {
      expect(st.isFile(), full).toBe(true);
      expect((await readFile(full)).equals(child.content), `${full} bytes`).toBe(true);
    } else if (child.type === 'symlink') {
      expect(st.isSymbolicLink(), full).toBe(true);
      expect(await readlink(full)).toBe(child.target);
    } else {
      expect(st.isDirectory(), full).toBe(true);
      await expectRestored(full, child);
    }
    if (child.type !== 'symlink') {
      expect(st.mode & 0o7777, `${full} mode`).toBe(child.mode ?? (child.type === 'dir' ? 0o755 : 0o644));
      expect(Math.abs(st.mtimeMs - (child.mtimeMs ?? DEFAULT_MTIME_MS)), `${full} mtime`).toBeLessThan(0.01);
      if (isRoot) {
        expect(st.uid, `${full} uid`).toBe(child.uid ?? 0);
        expect(st.gid, `${full} gid`).toBe(child.gid ?? 0);
      }
    }
  }
  // and nothing more than the spec
  expect((await readdir(dir)).sort()).toEqual(Object.keys(spec.children).sort());
}

describe('Holdfast writes, restic checks and restores', () => {
  it('two folder snapshots and an image snapshot sharing blobs pass restic check --read-data and restore byte for byte', async () => {
    const repoDir = path.join(work.dir, 'repo-a');
    const repo = await VaultRepository.init(new LocalBackend(repoDir), PASSPHRASE);
    const writer = new TestVaultWriter(repo);
    const { big, shared } = sizes();

    const v1: Extract<SpecNode, { type: 'dir' }> = {
      type: 'dir',
      mode: 0o750,
      children: {
        'index.html': {
          type: 'file',
          content: Buffer.from('<p>hello</p>\n'.repeat(500)),
          mode: 0o640,
          uid: 1234,
          gid: 5678,
        },
        'empty.txt': { type: 'file', content: Buffer.alloc(0) },
        'big.bin': { type: 'file', content: big, mtimeMs: Date.UTC(2023, 0, 2, 3, 4, 5, 6) },
        'zeros.bin': { type: 'file', content: Buffer.alloc(MiB + 1000) },
        link: { type: 'symlink', target: 'index.html' },
        'odd "name" with \\ and\ttab.txt': { type: 'file', content: Buffer.from('odd') },
        'ünïcødé ✓.txt': { type: 'file', content: Buffer.from('unicode') },
        sub: {
          type: 'dir',
          children: {
            deeper: {
              type: 'dir',
              mode: 0o700,
              children: { 'c.txt': { type: 'file', content: Buffer.from('deep\n') } },
            },
            emptydir: { type: 'dir', children: {} },
          },
        },
      },
    };
    const snap1 = await writer.writeSnapshot({
      absPath: '/srv/www',
      top: v1,
      hostname: 'web1',
      datasourceId: 'ds-1',
      group: 'web servers',
      recoveryPointId: 'rp-1',
      timeMs: Date.UTC(2024, 5, 1, 12, 0, 0),
    });
    const firstCount = writer.lastNewDataBlobs;

    const v2: typeof v1 = {
      ...v1,
      children: {
        ...v1.children,
        'index.html': {
          type: 'file',
          content: Buffer.from('<p>changed</p>\n'),
          mode: 0o640,
          uid: 1234,
          gid: 5678,
        },
        'new.txt': { type: 'file', content: Buffer.from('new file') },
      },
    };
    const snap2 = await writer.writeSnapshot({
      absPath: '/srv/www',
      top: v2,
      hostname: 'web1',
      datasourceId: 'ds-1',
      group: 'web servers',
      recoveryPointId: 'rp-2',
      timeMs: Date.UTC(2024, 5, 2, 12, 0, 0),
    });
    // only the two changed files' blocks are new; big.bin's three blocks are shared
    expect(writer.lastNewDataBlobs).toBe(2);
    expect(firstCount).toBeGreaterThanOrEqual(8);

    const image = Buffer.concat([shared, randomBytes(MiB), Buffer.alloc(MiB)]);
    const snap3 = await writer.writeSnapshot({
      absPath: '/dev/vda',
      top: { type: 'file', content: image, mode: 0o600 },
      hostname: 'db1',
      datasourceId: 'ds-2',
      group: 'databases',
      recoveryPointId: 'rp-3',
      timeMs: Date.UTC(2024, 5, 3, 12, 0, 0),
    });
    // the image's first block is big.bin's first block, its last one zeros.bin's first
    expect(writer.lastNewDataBlobs).toBe(1);

    const check = await resticOk(repoDir, PASSPHRASE, ['check', '--read-data']);
    expect(check).toContain('no errors were found');

    const listed = JSON.parse(await resticOk(repoDir, PASSPHRASE, ['snapshots', '--json'])) as {
      id: string;
      hostname: string;
      paths: string[];
      tags: string[];
      time: string;
    }[];
    const byId = new Map(listed.map((s) => [s.id, s]));
    expect(listed).toHaveLength(3);
    expect(byId.get(snap1)).toMatchObject({
      hostname: 'web1',
      paths: ['/srv/www'],
      tags: ['holdfast', 'ds:ds-1', 'group:web servers', 'rp:rp-1'],
    });
    expect(parseGoTime(byId.get(snap1)!.time)).toBe(BigInt(Date.UTC(2024, 5, 1, 12, 0, 0)) * 1_000_000n);
    expect(byId.get(snap2)?.tags).toContain('rp:rp-2');
    expect(byId.get(snap3)).toMatchObject({ hostname: 'db1', paths: ['/dev/vda'] });
    expect(parseHoldfastTags(byId.get(snap3)?.tags)).toEqual({
      datasourceId: 'ds-2',
      group: 'databases',
      recoveryPointId: 'rp-3',
    });

    const t1 = path.join(work.dir, 'restore-1');
    await resticOk(repoDir, PASSPHRASE, ['restore', snap1, '--target', t1]);
    await expectRestored(path.join(t1, 'srv', 'www'), v1);
    expect((await stat(path.join(t1, 'srv', 'www'))).mode & 0o777).toBe(0o750);

    const t2 = path.join(work.dir, 'restore-2');
    await resticOk(repoDir, PASSPHRASE, ['restore', snap2, '--target', t2]);
    await expectRestored(path.join(t2, 'srv', 'www'), v2);

    const t3 = path.join(work.dir, 'restore-3');
    await resticOk(repoDir, PASSPHRASE, ['restore', snap3, '--target', t3]);
    const restoredImage = await readFile(path.join(t3, 'dev', 'vda'));
    expect(sha256Hex(restoredImage)).toBe(sha256Hex(image));

    // `restic dump` streams one file out of a snapshot by its absolute path
    const dumped = await resticOk(repoDir, PASSPHRASE, ['dump', snap2, '/srv/www/new.txt']);
    expect(dumped).toBe('new file');

    // no lock left behind by anyone
    expect(await countFiles(new LocalBackend(repoDir), 'locks')).toBe(0);
  });
});

describe('restic writes, Holdfast reads', () => {
  it('reads a snapshot made by `restic backup` into a Holdfast vault: tree walk and blobs byte-identical', async () => {
    const repoDir = path.join(work.dir, 'repo-b');
    const backend = new LocalBackend(repoDir);
    await VaultRepository.init(backend, PASSPHRASE);

    const src = path.join(work.dir, 'src-b');
    await mkdir(path.join(src, 'nested', 'more'), { recursive: true });
    const files: Record<string, Buffer> = {
      'small.txt': Buffer.from('small file from restic\n'),
      'chunked.bin': randomBytes(5 * MiB), // restic's chunker splits this into several blobs
      'nested/text.txt': Buffer.from('compressible '.repeat(10_000)),
      'nested/more/empty': Buffer.alloc(0),
    };
    for (const [rel, data] of Object.entries(files)) await writeFile(path.join(src, rel), data);
    await symlink('small.txt', path.join(src, 'link'));
    await utimes(
      path.join(src, 'small.txt'),
      new Date('2022-02-02T02:02:02.5Z'),
      new Date('2022-02-02T02:02:02.5Z'),
    );

    await resticOk(repoDir, PASSPHRASE, ['backup', src, '--host', 'resticbox', '--tag', 'from-restic']);

    const repo = await VaultRepository.open(backend, PASSPHRASE);
    const snaps = await repo.listSnapshots();
    expect(snaps).toHaveLength(1);
    const { snapshot } = snaps[0]!;
    expect(snapshot.hostname).toBe('resticbox');
    expect(snapshot.paths).toEqual([src]);
    expect(snapshot.tags).toEqual(['from-restic']);

    // restic keeps the absolute path in the tree: descend to the source folder
    let treeId = snapshot.tree;
    for (const part of src.split('/').filter(Boolean)) {
      const node = (await repo.loadTree(treeId)).find((n) => n.name === part);
      expect(node?.type, part).toBe('dir');
      treeId = node!.subtree!;
    }
    const seen = new Map<string, TreeNode>();
    for await (const { path: p, node } of repo.walk(treeId)) seen.set(p, node);
    expect([...seen.keys()].sort()).toEqual([
      'chunked.bin',
      'link',
      'nested',
      'nested/more',
      'nested/more/empty',
      'nested/text.txt',
      'small.txt',
    ]);
    for (const [rel, data] of Object.entries(files)) {
      const node = seen.get(rel)!;
      expect(node.type).toBe('file');
      expect(node.size ?? 0).toBe(data.length);
      const blobs = await Promise.all((node.content ?? []).map((id) => repo.readBlob('data', id)));
      expect(Buffer.concat(blobs).equals(data), rel).toBe(true);
    }
    expect(seen.get('chunked.bin')!.content!.length).toBeGreaterThan(1);
    expect(seen.get('link')).toMatchObject({ type: 'symlink', linktarget: 'small.txt' });
    expect(parseGoTime(seen.get('small.txt')!.mtime!)).toBe(
      BigInt(Date.parse('2022-02-02T02:02:02.5Z')) * 1_000_000n,
    );

    // restic v2 stores index and snapshot compressed (encoding byte 2): the reads above prove we decode it
    const index = await repo.loadIndex();
    expect([...index.data.values()].some((b) => b.uncompressedLength !== undefined)).toBe(true);
  });

  it('honours a lock restic holds, and restic honours ours', async () => {
    const repoDir = path.join(work.dir, 'repo-locks');
    const backend = new LocalBackend(repoDir);
    const repo = await VaultRepository.init(backend, PASSPHRASE);

    // restic holds a shared lock while `backup --stdin` waits for its input
    const running = resticBackupFromStdin(repoDir, PASSPHRASE, [
      '--stdin-filename',
      'disk.img',
      '--host',
      'imager',
    ]);
    await waitFor(async () => (await countFiles(backend, 'locks')) > 0, 15_000);
    const err = await repo.lock({ exclusive: true, recheckDelayMs: 10 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VaultLockedError);
    expect((err as VaultLockedError).holder.hostname).toBe(os.hostname());
    expect((err as Error).message).toMatch(
      /^vault is already locked by PID \d+ on .+ lock created at \d{4}-/,
    );
    // a shared lock coexists with restic's shared lock
    const shared = await repo.lock({ exclusive: false, recheckDelayMs: 10 });
    await shared.release();
    const image = randomBytes(3 * MiB);
    const result = await running.finish(image);
    expect(result.code, result.stderr).toBe(0);
    expect(await countFiles(backend, 'locks')).toBe(0);

    // the stdin backup is a single-file snapshot: read it back
    const snaps = await repo.listSnapshots();
    const root = await repo.loadTree(snaps[0]!.snapshot.tree);
    const disk = root.find((n) => n.name === 'disk.img')!;
    const blobs = await Promise.all(disk.content!.map((id) => repo.readBlob('data', id)));
    expect(Buffer.concat(blobs).equals(image)).toBe(true);

    // with Holdfast's exclusive lock in place, restic refuses to start a backup
    const ours = await repo.lock({ exclusive: true, recheckDelayMs: 10 });
    const blocked = await restic(repoDir, PASSPHRASE, ['backup', '--stdin', '--stdin-filename', 'x']);
    expect(blocked.code).not.toBe(0);
    expect(blocked.stderr).toMatch(/locked exclusively/);
    await ours.release();
    expect(await countFiles(backend, 'locks')).toBe(0);
    expect(await resticOk(repoDir, PASSPHRASE, ['check', '--read-data'])).toContain('no errors were found');
  });

  it('opens a repository made by `restic init --repository-version 2`, adds a snapshot restic then verifies', async () => {
    const repoDir = path.join(work.dir, 'repo-c');
    const resticPassword = 'short pw'; // restic accepts any length; Holdfast only enforces 16+ for new keys
    await resticOk(repoDir, resticPassword, ['init', '--repository-version', '2']);
    const repo = await VaultRepository.open(new LocalBackend(repoDir), resticPassword);
    expect(repo.config.version).toBe(2);

    await expect(VaultRepository.open(new LocalBackend(repoDir), 'not the password at all')).rejects.toThrow(
      'wrong vault passphrase (no key in keys/ opens with it)',
    );

    const writer = new TestVaultWriter(repo);
    const content = Buffer.from('written by Holdfast into a restic-made repository');
    const snap = await writer.writeSnapshot({
      absPath: '/data',
      top: { type: 'dir', children: { 'f.txt': { type: 'file', content } } },
      hostname: 'agent-x',
      datasourceId: 'ds-9',
      group: 'g',
      recoveryPointId: 'rp-9',
      timeMs: Date.now(),
    });
    expect(await resticOk(repoDir, resticPassword, ['check', '--read-data'])).toContain(
      'no errors were found',
    );
    const target = path.join(work.dir, 'restore-c');
    await resticOk(repoDir, resticPassword, ['restore', snap, '--target', target]);
    const restored = await describeTree(target);
    expect(restored.get('data/f.txt')).toEqual(content);

    // a second passphrase added by Holdfast works for restic too
    await repo.addPassphrase('another long passphrase for restic');
    expect(await resticOk(repoDir, 'another long passphrase for restic', ['snapshots', '--json'])).toContain(
      snap,
    );
  });
});

async function countFiles(backend: LocalBackend, folder: 'locks'): Promise<number> {
  let n = 0;
  for await (const _ of backend.list(folder)) n++;
  return n;
}

async function waitFor(cond: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}
