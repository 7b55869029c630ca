import { readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resticOk } from '../server/vault/format/restic-cli.test-helpers.ts';
import {
  addDatasource,
  MiB,
  backup,
  fileHashes,
  waitJobEnd,
  waitJobUntil,
  writeDistinctFiles,
} from './e2e-helpers.ts';
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
 * The server is killed (SIGKILL) in the middle of an online backup, after some packs were
 * uploaded and recorded. The restarted server takes the job up again; the attempt that finishes
 * does not upload again what the killed one had recorded, the vault's index names every block
 * exactly once, restic checks every byte, and a restore is byte-identical. Pack files the killed
 * attempt uploaded but had not recorded yet (at most the packs it had in flight) are the only
 * extra files; restic reports them as unreferenced, which `prune` removes. The killed process's
 * lock is removed as stale (restic's `unlock` rule) when the restarted server opens the vault.
 */

const PASSPHRASE = 'killed midway, resumed whole';
// 300 distinct 1 MiB blocks: about 19 packs of 16 MiB, far more than a run keeps in flight
const FILES = 300;
/**
 * What an online backup keeps in flight (server/vault/online-backup.ts): a pack per thread of
 * the vault pool (one per core, up to 4), plus one being uploaded.
 */
const PACKS_IN_FLIGHT = Math.min(4, os.availableParallelism()) + 1;

describe('an online backup whose server is killed midway', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  let src: string;
  let vaultDir: string;

  const restic = (args: string[]) => resticOk(vaultDir, PASSPHRASE, args);

  beforeAll(async () => {
    server = await startServer();
    agent = await startAgent(server, 'crasher');
    work = await tempDir('vault-crash');
    src = path.join(work, 'src');
    vaultDir = path.join(work, 'vault');
    await writeDistinctFiles(src, FILES, 'vault-crash');
    await writeFile(path.join(work, 'pass'), `${PASSPHRASE}\n`, { mode: 0o600 });
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('resumes after the restart without uploading recorded packs again', async () => {
    const create = await cli([
      'vault',
      'create',
      ...adminArgs(server),
      '--path',
      vaultDir,
      '--passphrase-file',
      path.join(work, 'pass'),
      '--json',
    ]);
    expect(create.code, create.stderr).toBe(0);
    // 1 MiB files: one block each.
    const ds = await addDatasource(server, { agent: 'crasher', path: src, blockSize: MiB });
    expect((await backup(server, ds)).state).toBe('succeeded');

    const { id: jobId } = await server.api<{ id: string }>('POST', '/online-backups', {
      datasourceIds: [ds],
    });
    // bytesSent grows once a pack is uploaded and recorded: kill the server right then.
    const before = await waitJobUntil(server, jobId, 'a recorded pack', (j) => j.bytesSent > 0, 60_000, 20);
    await server.restart('SIGKILL');
    expect(before.state).toBe('running');

    const done = await waitJobEnd(server, jobId, 180_000);
    expect(done.state, done.error ?? '').toBe('succeeded');
    expect(done.attempts).toBeGreaterThanOrEqual(2);
    const result = done.result as { packsUploaded: number; points: { snapshotId: string }[] };
    expect(result.points).toHaveLength(1);

    // The index names every block once, in packs that all exist.
    const indexed = (await restic(['list', 'packs'])).trim().split('\n').sort();
    const blobLines = (await restic(['list', 'blobs'])).trim().split('\n');
    const blobIds = blobLines.map((l) => l.split(' ')[1]!);
    expect(new Set(blobIds).size, 'a blob is indexed in two packs').toBe(blobIds.length);
    expect(blobLines.filter((l) => l.startsWith('data ')).length).toBe(FILES);
    // The finishing attempt skipped what the killed one had recorded (at least one data pack).
    expect(result.packsUploaded).toBeLessThan(indexed.length);

    // Files in data/: the indexed packs, plus at most the killed attempt's packs in flight.
    const files: string[] = [];
    for (const dir of await readdir(path.join(vaultDir, 'data'))) {
      files.push(
        ...(await readdir(path.join(vaultDir, 'data', dir))).filter((f) => /^[0-9a-f]{64}$/.test(f)),
      );
    }
    for (const id of indexed) expect(files).toContain(id);
    expect(files.length - indexed.length).toBeLessThanOrEqual(PACKS_IN_FLIGHT);

    // The killed process's lock was removed as stale when the restarted server opened the vault
    // (restic's check and prune refuse to run beside any lock).
    expect((await restic(['list', 'locks', '--no-lock'])).trim()).toBe('');
    await restic(['check', '--read-data']);
    const out = path.join(work, 'restic-out');
    await restic(['restore', result.points[0]!.snapshotId, '--target', out]);
    expect(await fileHashes(path.join(out, src))).toEqual(await fileHashes(src));
    // The retried attempt starts after the job queue's one-minute backoff: more than the default.
  }, 240_000);
});
