import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addDatasource,
  fileHashes,
  flatThrottle,
  MiB,
  recoveryPoints,
  requestBackup,
  restore,
  setThrottle,
  waitJobEnd,
  waitJobUntil,
  writeDistinctFiles,
} from './e2e-helpers.ts';
import { startAgent, startServer, type TestAgent, type TestServer, tempDir } from './harness.ts';

/*
 * A server killed (SIGKILL) in the middle of a backup: at its restart the job goes back to
 * the queue, and when the agent reconnects the same job resumes and succeeds. The interrupted
 * attempt leaves no recovery point: the job has exactly one, made by its last attempt.
 */
describe('a backup resumes after a server crash', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;

  beforeAll(async () => {
    server = await startServer({ extraArgs: ['--resume-window', '2m'] });
    agent = await startAgent(server, 'survivor');
    // Slow enough to be caught in the middle (120 MiB take about 6 s): progress reaches the
    // job view only every second or two.
    await setThrottle(server, 'survivor', flatThrottle(20 * MiB));
    work = await tempDir('resume-crash');
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('the same job resumes after the restart, with one recovery point, restoring identical', async () => {
    const src = path.join(work, 'src');
    const total = await writeDistinctFiles(src, 120, 'crash');
    const expected = await fileHashes(src);
    // 1 MiB files: one block each.
    const id = await addDatasource(server, { agent: 'survivor', path: src, blockSize: MiB });

    const jobId = await requestBackup(server, id);
    const before = await waitJobUntil(
      server,
      jobId,
      '20 % sent',
      (j) => j.state === 'running' && j.bytesSent >= 0.2 * total,
    );
    await server.restart('SIGKILL');

    const job = await waitJobEnd(server, jobId, 120_000);
    expect(job, job.error ?? '').toMatchObject({ id: jobId, state: 'succeeded', error: null });
    expect(job.attempts).toBeGreaterThanOrEqual(2);
    expect(job.bytesSent).toBeGreaterThanOrEqual(before.bytesSent);
    expect(job.files).toBe(120);
    // One recovery point, made by the resumed attempt of the same job; none from the killed one.
    const rps = await recoveryPoints(server, id);
    expect(rps).toHaveLength(1);
    expect(rps[0]).toMatchObject({ id: job.rpId, jobId, files: 120, bytes: total });

    const target = path.join(work, 'restore');
    const restored = await restore(server, job.rpId!, target);
    expect(restored, restored.error ?? '').toMatchObject({ state: 'succeeded' });
    expect(await fileHashes(target)).toEqual(expected);
  });
});
