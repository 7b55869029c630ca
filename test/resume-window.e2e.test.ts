import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addDatasource,
  backup,
  fileHashes,
  flatThrottle,
  MiB,
  requestBackup,
  restore,
  runAgent,
  setThrottle,
  waitJobEnd,
  waitJobUntil,
  writeDistinctFiles,
} from './e2e-helpers.ts';
import { startAgent, startServer, stopProcess, type TestAgent, type TestServer, tempDir } from './harness.ts';

/*
 * The resume window: an interrupted backup waits for its agent only so long. With
 * --resume-window 3s and the agent stopped mid-backup, the job fails saying the agent did not
 * come back in time; the blocks it stored are not lost: the next backup, once the agent runs
 * again, sends only what is missing.
 */
describe('an interrupted backup whose agent stays away fails after the resume window', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;

  beforeAll(async () => {
    server = await startServer({ extraArgs: ['--resume-window', '3s'] });
    agent = await startAgent(server, 'wanderer');
    await setThrottle(server, 'wanderer', flatThrottle(16 * MiB));
    work = await tempDir('resume-window');
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('fails after the window; the next backup reuses the blocks already stored', async () => {
    const src = path.join(work, 'src');
    const total = await writeDistinctFiles(src, 120, 'window');
    const expected = await fileHashes(src);
    // 1 MiB files: one block each.
    const id = await addDatasource(server, { agent: 'wanderer', path: src, blockSize: MiB });

    const jobId = await requestBackup(server, id);
    await waitJobUntil(
      server,
      jobId,
      '40 % sent',
      (j) => j.state === 'running' && j.bytesSent >= 0.4 * total,
    );
    // Stop the agent process, keeping its state folder, and do not start it again yet.
    await stopProcess(agent.proc);
    const stoppedAt = Date.now();

    const failed = await waitJobEnd(server, jobId, 30_000);
    expect(failed.state).toBe('failed');
    expect(failed.error).toMatch(/did not come back within 3 ?s/);
    // It waited for the window before failing.
    expect(new Date(failed.finishedAt!).getTime()).toBeGreaterThanOrEqual(stoppedAt + 2_000);
    expect(failed.bytesSent).toBeGreaterThan(0);
    expect(failed.rpId).toBeNull();

    agent = await runAgent(server, 'wanderer', agent.stateDir);
    const job = await backup(server, id);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.bytesScanned).toBe(total);
    // Blocks stored before the failure are not sent again (only unacknowledged ones may be).
    expect(job.bytesSent).toBeLessThan(total);
    expect(job.bytesSent).toBeLessThanOrEqual(total - failed.bytesSent + 64 * MiB);

    const target = path.join(work, 'restore');
    const restored = await restore(server, job.rpId!, target);
    expect(restored, restored.error ?? '').toMatchObject({ state: 'succeeded' });
    expect(await fileHashes(target)).toEqual(expected);
  });
});
