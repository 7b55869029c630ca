import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, open, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resticOk } from '../server/vault/format/restic-cli.test-helpers.ts';
import { addDatasource, backup, fileHashes, KiB, MiB, sha256File, waitJobEnd } from './e2e-helpers.ts';
import {
  adminArgs,
  cli,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
} from './harness.ts';

/*
 * The vault end to end: a local vault, files and image datasources backed up to disk and
 * copied online; restic itself checks (--read-data), lists and restores what Holdfast wrote;
 * a second copy uploads only new blocks, also across agents; Holdfast restores vault points;
 * a brand-new server with an empty database attaches the vault and restores from it.
 */

const run = promisify(execFile);
const PASSPHRASE = 'correct horse battery staple 42';

interface VaultRp {
  id: string;
  datasourceId: string;
  tier: string;
  kind: string;
}

function restic(repo: string, args: string[]) {
  return resticOk(repo, PASSPHRASE, args);
}

async function onlineBackup(server: TestServer, datasourceIds: string[]) {
  const args = ['online-backup', ...adminArgs(server), '--json', '--wait'];
  for (const id of datasourceIds) args.push('--datasource', id);
  const res = await cli(args);
  expect(res.code, res.stderr + res.stdout).toBe(0);
  expect(res.json.state).toBe('succeeded');
  return res.json.result as {
    points: { rpId: string; snapshotId: string; datasourceId: string }[];
    dataBlobsUploaded: number;
    blobsDeduplicated: number;
    bytesUploaded: number;
  };
}

async function listFiles(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true })).sort();
}

describe('vault', () => {
  let server: TestServer;
  let serverB: TestServer | undefined;
  let alpha: TestAgent;
  let beta: TestAgent;
  let gamma: TestAgent | undefined;
  let work: string;
  let vaultDir: string;
  let passFile: string;
  let src: string;
  let srcCopy: string;
  let image: string;
  let filesDs: string;
  let imageDs: string;
  let copyDs: string;
  const vaultRps: VaultRp[] = [];

  beforeAll(async () => {
    server = await startServer({ extraArgs: ['--retry-backoff', '1s'] });
    alpha = await startAgent(server, 'alpha');
    beta = await startAgent(server, 'beta');
    work = await tempDir('vault');
    vaultDir = path.join(work, 'vault');
    passFile = path.join(work, 'pass');
    await writeFile(passFile, `${PASSPHRASE}\n`, { mode: 0o600 });
    src = path.join(work, 'src');
    await mkdir(path.join(src, 'sub', 'deeper'), { recursive: true });
    for (let i = 0; i < 6; i++) await writeFile(path.join(src, `r${i}.bin`), randomBytes(700 * KiB + i));
    await writeFile(path.join(src, 'sub', 'text.txt'), 'hello vault\n'.repeat(50_000));
    await writeFile(path.join(src, 'sub', 'deeper', 'empty'), '');
    await writeFile(path.join(src, 'sub', 'deeper', 'name with "quotes"'), randomBytes(3000));
    await symlink('sub/text.txt', path.join(src, 'link'));
    // a sparse file: data, a hole of two blocks, data
    const fh = await open(path.join(src, 'sparse.bin'), 'w');
    await fh.write(randomBytes(MiB), 0, MiB, 0);
    await fh.write(randomBytes(100 * KiB), 0, 100 * KiB, 3 * MiB);
    await fh.close();
    srcCopy = path.join(work, 'copy');
    await run('cp', ['-a', src, srcCopy]);
    image = path.join(work, 'disk.img');
    const ih = await open(image, 'w');
    await ih.write(randomBytes(2 * MiB), 0, 2 * MiB, 0);
    await ih.write(Buffer.from('x'.repeat(MiB)), 0, MiB, 5 * MiB);
    await ih.truncate(8 * MiB);
    await ih.close();
  });

  afterAll(async () => {
    await gamma?.stop();
    await alpha?.stop();
    await beta?.stop();
    await server?.stop();
    await serverB?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('refuses a short passphrase, then creates a local vault', async () => {
    const short = path.join(work, 'short');
    await writeFile(short, 'too short\n');
    const bad = await cli([
      'vault',
      'create',
      ...adminArgs(server),
      '--path',
      vaultDir,
      '--passphrase-file',
      short,
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/at least 16 characters/);
    expect(bad.stderr).not.toContain('too short');
    const ok = await cli([
      'vault',
      'create',
      ...adminArgs(server),
      '--path',
      vaultDir,
      '--passphrase-file',
      passFile,
      '--json',
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json.repositoryId).toMatch(/^[0-9a-f]{64}$/);
  });

  it('copies files and image points to the vault; restic checks, lists and restores them', async () => {
    filesDs = await addDatasource(server, { agent: 'alpha', path: src });
    imageDs = await addDatasource(server, {
      agent: 'alpha',
      path: image,
      kind: 'image',
      blockSize: 64 * KiB,
    });
    for (const ds of [filesDs, imageDs]) expect((await backup(server, ds)).state).toBe('succeeded');
    await appendFile(path.join(src, 'r0.bin'), 'more');
    for (const ds of [filesDs, imageDs]) expect((await backup(server, ds)).state).toBe('succeeded');

    const report = await onlineBackup(server, [filesDs, imageDs]);
    expect(report.points).toHaveLength(2);

    await restic(vaultDir, ['check', '--read-data']);
    const stdout = await restic(vaultDir, ['snapshots', '--json']);
    const snaps = JSON.parse(stdout) as { id: string; hostname: string; paths: string[]; tags: string[] }[];
    expect(snaps).toHaveLength(2);
    for (const s of snaps) {
      expect(s.hostname).toBe('alpha');
      expect(s.tags).toContain('holdfast');
      expect(s.tags.some((t) => t.startsWith('rp:'))).toBe(true);
    }
    const filesSnap = snaps.find((s) => s.paths[0] === src)!;
    expect(filesSnap.tags).toContain(`ds:${filesDs}`);
    const imageSnap = snaps.find((s) => s.paths[0] === image)!;
    expect(imageSnap).toBeDefined();

    const out = path.join(work, 'restic-out');
    await restic(vaultDir, ['restore', filesSnap.id, '--target', out]);
    expect(await fileHashes(path.join(out, src))).toEqual(await fileHashes(src));
    await restic(vaultDir, ['restore', imageSnap.id, '--target', out]);
    expect(await sha256File(path.join(out, image))).toBe(await sha256File(image));
    await rm(out, { recursive: true, force: true });

    const rps = await server.api<VaultRp[]>('GET', '/recovery-points?tier=vault');
    expect(rps).toHaveLength(2);
    vaultRps.push(...rps);
  });

  it('a second copy uploads only new blocks, also for another agent with the same data', async () => {
    await writeFile(path.join(src, 'new.bin'), randomBytes(10 * KiB));
    expect((await backup(server, filesDs)).state).toBe('succeeded');
    const again = await onlineBackup(server, [filesDs]);
    expect(again.points).toHaveLength(1);
    expect(again.dataBlobsUploaded).toBe(1);
    expect(again.blobsDeduplicated).toBeGreaterThan(5);

    copyDs = await addDatasource(server, { agent: 'beta', path: srcCopy });
    expect((await backup(server, copyDs)).state).toBe('succeeded');
    const other = await onlineBackup(server, [copyDs]);
    // r0.bin differs (appended to after the copy was made): its last block is the only new one
    expect(other.dataBlobsUploaded).toBeLessThanOrEqual(1);
    await restic(vaultDir, ['check', '--read-data']);
    const status = await cli(['vault', 'status', ...adminArgs(server), '--json']);
    expect(status.code, status.stderr).toBe(0);
    expect(status.json.snapshots).toBe(4);
    expect(status.json.recoveryPoints).toBe(4);
    expect(status.json.storedBytes).toBeGreaterThan(0);
    expect(status.json.lastOnlineJob.state).toBe('succeeded');
  });

  it('restores vault points through Holdfast, whole and selected paths', async () => {
    const rps = await server.api<(VaultRp & { createdAt: string })[]>(
      'GET',
      `/recovery-points?tier=vault&datasourceId=${filesDs}`,
    );
    const newest = rps[0]!;
    const target = path.join(work, 'hf-out');
    const job = await server.api<{ id: string }>('POST', '/restores', { rpId: newest.id, target });
    const done = await waitJobEnd(server, job.id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    expect(await fileHashes(target)).toEqual(await fileHashes(src));
    await rm(target, { recursive: true, force: true });

    const sel = await server.api<{ id: string }>('POST', '/restores', {
      rpId: newest.id,
      target,
      paths: ['sub/deeper'],
    });
    expect((await waitJobEnd(server, sel.id)).state).toBe('succeeded');
    expect(await listFiles(target)).toEqual([
      'sub',
      'sub/deeper',
      'sub/deeper/empty',
      'sub/deeper/name with "quotes"',
    ]);
    await rm(target, { recursive: true, force: true });

    const imageRp = vaultRps.find((r) => r.datasourceId === imageDs)!;
    const imgTarget = path.join(work, 'restored.img');
    const ij = await server.api<{ id: string }>('POST', '/restores', { rpId: imageRp.id, target: imgTarget });
    expect((await waitJobEnd(server, ij.id)).state).toBe('succeeded');
    expect(await sha256File(imgTarget)).toBe(await sha256File(image));
    await rm(imgTarget, { force: true });
  });

  it('a new server attaches the vault: wrong passphrase refused, then lists and restores its points', async () => {
    await server.stop();
    server = undefined as unknown as TestServer;
    serverB = await startServer();
    const before = await listFiles(vaultDir);
    const wrong = path.join(work, 'wrong');
    await writeFile(wrong, 'not the passphrase at all\n');
    const bad = await cli([
      'vault',
      'attach',
      ...adminArgs(serverB),
      '--path',
      vaultDir,
      '--passphrase-file',
      wrong,
    ]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/wrong vault passphrase/);
    expect(await listFiles(vaultDir)).toEqual(before);
    const none = await cli(['vault', 'status', ...adminArgs(serverB), '--json']);
    expect(none.json.configured).toBe(false);

    const ok = await cli([
      'vault',
      'attach',
      ...adminArgs(serverB),
      '--path',
      vaultDir,
      '--passphrase-file',
      passFile,
      '--json',
    ]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json.recoveryPointsAdded).toBe(4);
    expect(ok.json.agentsAdded.sort()).toEqual(['alpha', 'beta']);
    const rps = await serverB.api<VaultRp[]>('GET', '/recovery-points?tier=vault');
    expect(rps).toHaveLength(4);
    // the recovery point ids survive: they are tagged in the vault
    for (const r of vaultRps) expect(rps.map((x) => x.id)).toContain(r.id);

    gamma = await startAgent(serverB, 'gamma');
    const filesRp = rps.find((r) => r.kind === 'files' && vaultRps.some((v) => v.id === r.id))!;
    const target = path.join(work, 'dr-out');
    const job = await serverB.api<{ id: string }>('POST', '/restores', {
      rpId: filesRp.id,
      target,
      agent: 'gamma',
    });
    const done = await waitJobEnd(serverB, job.id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    const expected = await fileHashes(src);
    expected.delete('new.bin');
    expect(await fileHashes(target)).toEqual(expected);

    const imageRp = rps.find((r) => r.kind === 'image')!;
    const imgTarget = path.join(work, 'dr.img');
    const ij = await serverB.api<{ id: string }>('POST', '/restores', {
      rpId: imageRp.id,
      target: imgTarget,
      agent: 'gamma',
    });
    expect((await waitJobEnd(serverB, ij.id)).state).toBe('succeeded');
    expect(await sha256File(imgTarget)).toBe(await sha256File(image));
    await restic(vaultDir, ['check']);
  });
});
