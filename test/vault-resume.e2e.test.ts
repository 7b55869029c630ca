import { execFile } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addDatasource,
  backup,
  fileHashes,
  getJob,
  type JobDetail,
  MiB,
  waitJobEnd,
  writeDistinctFiles,
} from './e2e-helpers.ts';
import { type FaultProxy, startFaultProxy } from './emulators/fault-proxy.ts';
import {
  S3RVER_ACCESS_KEY_ID,
  S3RVER_SECRET_ACCESS_KEY,
  type S3Emulator,
  startS3Emulator,
} from './emulators/s3.ts';
import {
  adminArgs,
  cli,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
  waitFor,
} from './harness.ts';

/*
 * An online backup whose uploads start failing midway (an S3 vault behind a real HTTP proxy
 * that answers 503 to every request once the first pack went through) fails its attempt, is
 * queued again with backoff, and once the proxy heals, the retried attempt of the same job
 * finishes. Nothing is uploaded twice: every pack file in the bucket is named by the index,
 * no blob is in two packs, and the pack bytes that reached the bucket across all attempts are
 * exactly the vault's size. restic checks (--read-data) and restores what the vault holds.
 */

const run = promisify(execFile);
const PASSPHRASE = 'resume me please, vault 0001';
const BUCKET = 'resume-vault';
// 200 distinct 1 MiB blocks: about 13 packs of 16 MiB, more than the 3 a run keeps in flight
const FILES = 200;

describe('an online backup interrupted by upload failures resumes without duplicate packs', () => {
  let s3: S3Emulator;
  let proxy: FaultProxy;
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  let src: string;

  const restic = (args: string[]) =>
    // --no-lock: s3rver (through the shared emulator wrapper) refuses restic's lock PutObject
    // (Content-MD5 mismatch); what is left in locks/ is asserted separately below.
    run('restic', ['-r', `s3:${s3.url}/${BUCKET}`, '--no-cache', '--no-lock', ...args], {
      env: {
        ...process.env,
        RESTIC_PASSWORD: PASSPHRASE,
        AWS_ACCESS_KEY_ID: S3RVER_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY: S3RVER_SECRET_ACCESS_KEY,
      },
      maxBuffer: 64 * MiB,
    });

  beforeAll(async () => {
    s3 = await startS3Emulator();
    proxy = await startFaultProxy(s3.port);
    server = await startServer({ extraArgs: ['--retry-backoff', '1s'] });
    agent = await startAgent(server, 'resumer');
    work = await tempDir('vault-resume');
    src = path.join(work, 'src');
    await writeDistinctFiles(src, FILES, 'vault-resume');
    await writeFile(
      path.join(work, 'creds'),
      `AWS_ACCESS_KEY_ID=${S3RVER_ACCESS_KEY_ID}\nAWS_SECRET_ACCESS_KEY=${S3RVER_SECRET_ACCESS_KEY}\n`,
      { mode: 0o600 },
    );
    await writeFile(path.join(work, 'pass'), `${PASSPHRASE}\n`, { mode: 0o600 });
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    await proxy?.close();
    await s3?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('fails midway, resumes when the storage heals, and uploads each pack once', async () => {
    const create = await cli([
      'vault',
      'create',
      ...adminArgs(server),
      '--backend',
      's3',
      '--endpoint',
      proxy.url,
      '--bucket',
      BUCKET,
      '--credentials-file',
      path.join(work, 'creds'),
      '--passphrase-file',
      path.join(work, 'pass'),
      '--json',
    ]);
    expect(create.code, create.stderr).toBe(0);
    // 1 MiB files: one block each.
    const ds = await addDatasource(server, { agent: 'resumer', path: src, blockSize: MiB });
    expect((await backup(server, ds)).state).toBe('succeeded');

    const isPackPut = (method: string, url: string) => method === 'PUT' && url.includes(`/${BUCKET}/data/`);
    // One pack reaches the bucket, then the storage fails every request until healed.
    proxy.resetCounts();
    proxy.failAfter(1, isPackPut);
    const { id: jobId } = await server.api<{ id: string }>('POST', '/online-backups', {
      datasourceIds: [ds],
    });

    // The first attempt fails (after the backend's own retries) and the job is queued again.
    const interrupted = await waitFor(
      'the first attempt to fail',
      async () => {
        const j = await getJob(server, jobId);
        if (['succeeded', 'failed', 'cancelled'].includes(j.state))
          throw new Error(`job ended before it was interrupted: ${JSON.stringify(j)}`);
        return j.retries >= 1 ? j : undefined;
      },
      90_000,
    );
    expect(interrupted.error).toMatch(/attempt 1 of 4 failed/);
    expect(proxy.failed).toBeGreaterThan(0);
    const packsBeforeHeal = proxy.forwarded.filter((r) => isPackPut(r.method, r.url) && r.status === 200);
    expect(packsBeforeHeal.length).toBeGreaterThanOrEqual(1);
    proxy.heal();

    const done: JobDetail = await waitJobEnd(server, jobId, 120_000);
    expect(done.state, done.error ?? '').toBe('succeeded');
    expect(done.attempts).toBeGreaterThanOrEqual(2);
    const result = done.result as { packsUploaded: number; points: { snapshotId: string }[] };
    expect(result.points).toHaveLength(1);
    // The attempt that finished did not upload again what the first one had recorded.
    expect(result.packsUploaded).toBeLessThan(
      proxy.forwarded.filter((r) => isPackPut(r.method, r.url) && r.status === 200).length + 1,
    );

    // What reached the bucket: every pack PUT that succeeded, across attempts.
    const packPuts = proxy.forwarded.filter((r) => isPackPut(r.method, r.url) && r.status === 200);
    const putIds = packPuts.map((r) => path.posix.basename(r.url.split('?')[0]!));
    expect(new Set(putIds).size, 'a pack was uploaded twice under the same id').toBe(putIds.length);

    // Files in data/ (restic list packs) = packs the index names; no blob in two packs.
    const files = (await restic(['list', 'packs'])).stdout.trim().split('\n').sort();
    const blobLines = (await restic(['list', 'blobs'])).stdout.trim().split('\n');
    const blobs = blobLines.map((l) => l.split(' ')[1]!);
    expect(new Set(blobs).size, 'a blob is stored in two packs').toBe(blobs.length);
    expect(putIds.sort()).toEqual(files);
    expect(blobLines.filter((l) => l.startsWith('data ')).length).toBe(FILES);

    // Bytes that reached the bucket across attempts = the vault's pack bytes (nothing twice).
    const uploaded = packPuts.reduce((n, r) => n + r.bytes, 0);
    const status = await cli(['vault', 'status', ...adminArgs(server), '--json']);
    expect(status.code, status.stderr).toBe(0);
    expect(status.json.packs).toBe(files.length);
    expect(status.json.storedBytes).toBe(uploaded);
    expect(status.json.dataBlobs).toBe(FILES);
    expect(uploaded).toBeGreaterThan(FILES * MiB);
    expect(uploaded).toBeLessThan(FILES * MiB * 1.02);

    // the failed attempt's lock (its release failed too) is gone: restic check/prune may run
    expect((await restic(['list', 'locks'])).stdout.trim()).toBe('');
    await restic(['check', '--read-data']);
    const out = path.join(work, 'restic-out');
    await restic(['restore', result.points[0]!.snapshotId, '--target', out]);
    expect(await fileHashes(path.join(out, src))).toEqual(await fileHashes(src));
  });
});
