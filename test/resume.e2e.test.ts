import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CutProxy, startCutProxy } from './cut-proxy.ts';
import {
  addDatasource,
  fileHashes,
  flatThrottle,
  MiB,
  recoveryPoints,
  requestBackup,
  restore,
  runAgent,
  setThrottle,
  waitJobEnd,
  writeDistinctFiles,
} from './e2e-helpers.ts';
import { enrollAgent, startServer, type TestAgent, type TestServer, tempDir } from './harness.ts';

/*
 * Resumable backups through real processes. The agent talks to the server through a TCP proxy
 * that can cut every connection at once; the agent redials and the job continues where it
 * stopped: blocks the server acknowledged are not asked for again, so each cut costs at most
 * the agent's window (64 MiB = 64 blocks of 1 MiB), never a restart from zero.
 * (A server crash: resume-crash.e2e.test.ts; the resume window: resume-window.e2e.test.ts.)
 */

/** The agent's credit window (agent/jobs/block-sender.ts) in 1 MiB blocks. */
const WINDOW_BLOCKS = 64;
/**
 * Slow enough that 200 MiB take about 10 s, so there is time to cut three times: progress
 * reaches the job view only every second or two.
 */
const RATE = 20 * MiB;

describe('backups resume after lost links', () => {
  let server: TestServer;
  let proxy: CutProxy;
  let agent: TestAgent;
  let work: string;

  beforeAll(async () => {
    server = await startServer({ extraArgs: ['--resume-window', '2m'] });
    proxy = await startCutProxy(Number(new URL(server.url).port));
    const stateDir = await enrollAgent(server, 'mover', { serverUrl: proxy.url });
    agent = await runAgent(server, 'mover', stateDir);
    await setThrottle(server, 'mover', flatThrottle(RATE));
    work = await tempDir('resume');
  });

  afterAll(async () => {
    await agent?.stop();
    await proxy?.close();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('three connection cuts: the job resumes each time and sends each block about once', async () => {
    const src = path.join(work, 'cuts');
    const total = await writeDistinctFiles(src, 200, 'cuts');
    const blocks = total / MiB;
    const expected = await fileHashes(src);
    // 1 MiB files: one block each.
    const id = await addDatasource(server, { agent: 'mover', path: src, blockSize: MiB });

    const jobId = await requestBackup(server, id);
    const cuts: { bytesSent: number; attempts: number; connections: number }[] = [];
    const job = await waitJobEnd(
      server,
      jobId,
      120_000,
      (j) => {
        const n = cuts.length;
        // Each cut in a fresh attempt, once the cumulative count passed 20 %, 40 %, 60 % (the
        // reported count lags the real one by up to a second of progress).
        if (n < 3 && j.state === 'running' && j.attempts === n + 1 && j.bytesSent >= ((n + 1) / 5) * total) {
          cuts.push({ bytesSent: j.bytesSent, attempts: j.attempts, connections: proxy.cut() });
        }
      },
      100,
    );
    expect(job, `${job.error} (cuts: ${JSON.stringify(cuts)})`).toMatchObject({
      state: 'succeeded',
      error: null,
    });
    expect(cuts).toHaveLength(3);
    for (const c of cuts) expect(c.connections).toBeGreaterThanOrEqual(1);
    expect(job.attempts).toBeGreaterThanOrEqual(4);
    // A restart from zero at each cut would send about N + 1.2 N blocks (N + 240 > N + 192).
    expect(job.blocksSent).toBeGreaterThanOrEqual(blocks);
    expect(job.blocksSent).toBeLessThanOrEqual(blocks + 3 * WINDOW_BLOCKS);
    expect(job.bytesSent).toBeLessThanOrEqual(total + 3 * WINDOW_BLOCKS * MiB);
    expect(job.files).toBe(200);

    const rps = await recoveryPoints(server, id);
    expect(rps.map((r) => r.jobId)).toEqual([jobId]);
    const target = path.join(work, 'restore-cuts');
    const restored = await restore(server, job.rpId!, target);
    expect(restored, restored.error ?? '').toMatchObject({ state: 'succeeded' });
    expect(await fileHashes(target)).toEqual(expected);
    await rm(target, { recursive: true, force: true });
  });
});
