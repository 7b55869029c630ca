import { rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addDatasource,
  flatThrottle,
  MiB,
  requestBackup,
  setThrottle,
  waitJobEnd,
  waitJobUntil,
  writeDistinctFiles,
} from './e2e-helpers.ts';
import { startAgent, startServer, type TestAgent, type TestServer, tempDir } from './harness.ts';

/*
 * Bandwidth throttling through real processes: the rate an administrator sets for an agent
 * (PUT /agents/:name/throttle) is what its backups get, within 20 %, and a change applies to a
 * backup already running.
 */
const RATE = 8 * MiB;

describe('agent bandwidth throttling', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;

  beforeAll(async () => {
    server = await startServer();
    agent = await startAgent(server, 'limited');
    work = await tempDir('throttle');
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('a backup runs at the set rate (8 MiB/s), within 20 %', async () => {
    await setThrottle(server, 'limited', flatThrottle(RATE));
    const src = path.join(work, 'steady');
    const total = await writeDistinctFiles(src, 48, 'steady');
    const id = await addDatasource(server, { agent: 'limited', path: src });
    const jobId = await requestBackup(server, id);
    // Every change of the reported count, with the time it was first seen.
    const samples: { t: number; bytes: number }[] = [];
    const job = await waitJobEnd(
      server,
      jobId,
      60_000,
      (j) => {
        if (j.state === 'running' && j.bytesSent !== samples.at(-1)?.bytes)
          samples.push({ t: Date.now(), bytes: j.bytesSent });
      },
      50,
    );
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.bytesSent).toBe(total);

    const seconds = (Date.parse(job.finishedAt!) - Date.parse(job.startedAt!)) / 1000;
    const overall = job.bytesSent / seconds;
    // The steady middle: from the first report past 15 % to the last below 90 %. Both ends are
    // seen with the same lag (progress is written about once a second), so it cancels out.
    const first = samples.find((s) => s.bytes >= 0.15 * total);
    const last = samples.findLast((s) => s.bytes <= 0.9 * total);
    const middle =
      first && last && last.t - first.t >= 2000
        ? ((last.bytes - first.bytes) * 1000) / (last.t - first.t)
        : undefined;
    console.info(
      `throttle ${RATE / MiB} MiB/s: overall ${(overall / MiB).toFixed(2)} MiB/s over ${seconds.toFixed(2)} s, ` +
        `middle ${middle ? (middle / MiB).toFixed(2) : 'n/a'} MiB/s (${samples.length} samples)`,
    );
    const observed = middle ?? overall;
    expect(observed).toBeGreaterThanOrEqual(0.8 * RATE);
    expect(observed).toBeLessThanOrEqual(1.2 * RATE);
    // However measured, the whole job may not beat the limit by more than the initial burst.
    expect(overall).toBeLessThanOrEqual(1.2 * RATE);
  });

  it('removing the limit applies to a running backup', async () => {
    // A low rate, so the throttled estimate is long whatever the load of the machine.
    const slow = 2 * MiB;
    await setThrottle(server, 'limited', flatThrottle(slow));
    const src = path.join(work, 'released');
    const total = await writeDistinctFiles(src, 48, 'released');
    const id = await addDatasource(server, { agent: 'limited', path: src });
    const jobId = await requestBackup(server, id);
    const running = await waitJobUntil(server, jobId, 'first bytes sent', (j) => j.bytesSent >= 2 * MiB);
    const releasedAt = Date.now();
    await setThrottle(server, 'limited', null);
    const agents = await server.api<{ name: string; throttle: unknown }[]>('GET', '/agents');
    expect(agents.find((a) => a.name === 'limited')?.throttle).toBeNull();

    const job = await waitJobEnd(server, jobId, 60_000);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.bytesSent).toBe(total);
    const elapsed = (Date.now() - releasedAt) / 1000;
    const throttledEstimate = (total - running.bytesSent) / slow;
    console.info(
      `limit removed at ${(running.bytesSent / MiB).toFixed(0)} MiB: finished in ${elapsed.toFixed(2)} s, ` +
        `throttled estimate ${throttledEstimate.toFixed(1)} s`,
    );
    expect(elapsed).toBeLessThan(throttledEstimate / 3);
  });
});
