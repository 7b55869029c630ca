import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  adminArgs,
  cli,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
} from './harness.ts';
import { newBlockBytes } from './e2e-helpers.ts';
import { describeTree, type TreeItem } from './tree.ts';

const MiB = 1024 * 1024;

/*
 * The spine of Holdfast, end to end: a TLS server process, two agent processes, the CLI.
 * Full backup, incremental that moves only changed blocks, restores of both recovery points,
 * of selected paths, and onto a second agent, all byte-identical.
 */
describe('backup and restore through real processes', () => {
  let server: TestServer;
  let alpha: TestAgent;
  let beta: TestAgent;
  let work: string;
  let src: string;
  let datasourceId: string;
  let rp1: { id: string; tree: Record<string, TreeItem> };
  let rp2: { id: string; tree: Record<string, TreeItem> };

  const admin = (...args: string[]) => cli([...args, ...adminArgs(server), '--json']);

  beforeAll(async () => {
    server = await startServer({ tls: true });
    [alpha, beta] = await Promise.all([startAgent(server, 'alpha'), startAgent(server, 'beta')]);
    work = await tempDir('e2e');
    src = path.join(work, 'src');
    await mkdir(path.join(src, 'docs/empty'), { recursive: true });
    await mkdir(path.join(src, 'bin'), { recursive: true });
    await writeFile(path.join(src, 'empty.txt'), '');
    await writeFile(path.join(src, 'docs/a.txt'), 'hello\n');
    await writeFile(path.join(src, 'docs/exactly-1MiB.bin'), randomBytes(MiB));
    await writeFile(path.join(src, 'big.bin'), randomBytes(2 * MiB + 512 * 1024));
    await writeFile(path.join(src, 'bin/tool.sh'), '#!/bin/sh\necho hi\n');
    await chmod(path.join(src, 'bin/tool.sh'), 0o750);
    await writeFile(path.join(src, 'docs/private.txt'), 'secret');
    await chmod(path.join(src, 'docs/private.txt'), 0o600);
    await symlink('docs/a.txt', path.join(src, 'link-to-a'));
    await symlink('/nonexistent/target', path.join(src, 'dangling'));
    await utimes(
      path.join(src, 'docs/a.txt'),
      new Date('2020-01-02T03:04:05Z'),
      new Date('2020-01-02T03:04:05Z'),
    );
    await utimes(path.join(src, 'docs'), new Date('2021-06-01T00:00:00Z'), new Date('2021-06-01T00:00:00Z'));
  });

  afterAll(async () => {
    await Promise.all([alpha?.stop(), beta?.stop()]);
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('adds a datasource through the CLI', async () => {
    const res = await admin('datasource', 'add', '--agent', 'alpha', '--path', src);
    expect(res.code, res.stderr).toBe(0);
    expect(res.json).toMatchObject({ agent: 'alpha', path: src, kind: 'files' });
    datasourceId = res.json.id;
    const list = await admin('datasources', 'list');
    expect(list.json.map((d: { id: string }) => d.id)).toContain(datasourceId);
  });

  it('takes a full backup', async () => {
    const tree = await describeTree(src);
    const res = await admin('backup', '--datasource', datasourceId, '--wait');
    expect(res.code, res.stderr + res.stdout).toBe(0);
    const job = res.json;
    expect(job).toMatchObject({ type: 'backup', state: 'succeeded', error: null, warnings: [] });
    expect(job.startedAt).toBeTruthy();
    expect(job.finishedAt).toBeTruthy();
    const fileBytes = 6 + MiB + 2.5 * MiB + 18 + 6;
    expect(job.files).toBe(6);
    expect(job.bytesScanned).toBe(fileBytes);
    expect(job.bytesSent).toBe(fileBytes);
    expect(job.bytesStored).toBeGreaterThan(0);
    rp1 = { id: job.rpId, tree };
  });

  it('sends only changed blocks in an incremental backup', async () => {
    // Change 100 bytes in the middle of big.bin, append to a small file, add one file, delete one.
    const big = path.join(src, 'big.bin');
    const bigBefore = await readFile(big);
    const fh = await open(big, 'r+');
    await fh.write(randomBytes(100), 0, 100, MiB + 4096);
    await fh.close();
    const bigChanged = newBlockBytes(bigBefore, await readFile(big));
    await writeFile(path.join(src, 'docs/a.txt'), 'hello\nworld\n');
    await writeFile(path.join(src, 'docs/new.txt'), 'brand new');
    await unlink(path.join(src, 'docs/private.txt'));
    const tree = await describeTree(src);

    const res = await admin('backup', '--datasource', datasourceId, '--wait');
    expect(res.code, res.stderr + res.stdout).toBe(0);
    const job = res.json;
    expect(job.state).toBe('succeeded');
    // Unchanged files are not re-read: only the three changed or new files are scanned.
    expect(job.bytesScanned).toBe(2.5 * MiB + 12 + 9);
    // Of big.bin only the block the change fell in crosses the wire (blocks are cut by content).
    // One block of at most 1 MiB (4 x 256 KiB), or two if the change moved a cut.
    expect(bigChanged).toBeGreaterThan(0);
    expect(bigChanged).toBeLessThanOrEqual(2 * MiB);
    expect(job.bytesSent).toBe(bigChanged + 12 + 9);
    expect(job.files).toBe(6);
    rp2 = { id: job.rpId, tree };

    const rps = await admin('rp', 'list', '--datasource', datasourceId);
    expect(rps.code).toBe(0);
    expect(rps.json.map((r: { id: string }) => r.id)).toEqual([rp2.id, rp1.id]);
    expect(rps.json[0]).toMatchObject({
      datasourceId,
      tier: 'disk',
      kind: 'files',
      consistency: expect.any(String),
    });
    expect(rps.json[0].bytes).toBe(2.5 * MiB + MiB + 12 + 9 + 18);
  });

  it('a full backup re-reads everything but sends nothing the agent already stored', async () => {
    const res = await admin('backup', '--datasource', datasourceId, '--full', '--wait');
    expect(res.json.state).toBe('succeeded');
    expect(res.json.bytesScanned).toBe(2.5 * MiB + MiB + 12 + 9 + 18);
    expect(res.json.bytesSent).toBe(0);
  });

  it('restores both recovery points byte-identically, with modes, mtimes, symlinks and empty dirs', async () => {
    for (const rp of [rp1, rp2]) {
      const target = path.join(work, `restore-${rp.id}`);
      const res = await admin('restore', '--rp', rp.id, '--target', target, '--wait');
      expect(res.code, res.stderr + res.stdout).toBe(0);
      expect(res.json).toMatchObject({ type: 'restore', state: 'succeeded' });
      expect(await describeTree(target)).toEqual(rp.tree);
    }
  });

  it('restores selected paths only, with their parent directories', async () => {
    const target = path.join(work, 'restore-selected');
    const res = await admin(
      'restore',
      '--rp',
      rp1.id,
      '--target',
      target,
      '--path',
      'docs/a.txt',
      '--path',
      'bin',
      '--wait',
    );
    expect(res.code, res.stderr + res.stdout).toBe(0);
    const tree = await describeTree(target);
    expect(Object.keys(tree).sort()).toEqual(['bin', 'bin/tool.sh', 'docs', 'docs/a.txt']);
    for (const p of Object.keys(tree)) expect(tree[p]).toEqual(rp1.tree[p]);
  });

  it('restores onto a second agent', async () => {
    const target = path.join(work, 'restore-beta');
    const res = await admin('restore', '--rp', rp2.id, '--target', target, '--agent', 'beta', '--wait');
    expect(res.code, res.stderr + res.stdout).toBe(0);
    expect(res.json.agent).toBe('beta');
    expect(await describeTree(target)).toEqual(rp2.tree);
  });

  it('fails a restore of a path that is not in the recovery point, with exit code 1', async () => {
    const res = await admin(
      'restore',
      '--rp',
      rp1.id,
      '--target',
      path.join(work, 'nope'),
      '--path',
      'no/such',
      '--wait',
    );
    expect(res.code).toBe(1);
    expect(res.json.state).toBe('failed');
    expect(res.json.error).toContain('no/such');
  });

  it('lists and shows jobs', async () => {
    const list = await admin('jobs', 'list');
    expect(list.code).toBe(0);
    expect(list.json.length).toBeGreaterThanOrEqual(7);
    const show = await admin('jobs', 'show', list.json[0].id);
    expect(show.json).toMatchObject({
      id: list.json[0].id,
      type: expect.any(String),
      state: expect.any(String),
      bytesScanned: expect.any(Number),
      bytesSent: expect.any(Number),
      bytesStored: expect.any(Number),
      files: expect.any(Number),
      warnings: expect.any(Array),
    });
    expect(show.json).toHaveProperty('startedAt');
    expect(show.json).toHaveProperty('finishedAt');
    expect(show.json).toHaveProperty('error');
    const agents = await admin('agents', 'list');
    expect(agents.json.map((a: { name: string }) => a.name).sort()).toEqual(['alpha', 'beta']);
  });
});
