import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileHashes, type JobDetail, recoveryPoints, restore, waitJobEnd } from './e2e-helpers.ts';
import { startAgent, startServer, type TestAgent, type TestServer, tempDir, waitFor } from './harness.ts';

/*
 * Nobody asks for this backup: a protection group's recovery-point time comes, the server's
 * own scheduler queues the job, the agent runs it, and the point is restorable. (The slot
 * arithmetic over weeks, missed runs and time zones is tested with a simulated clock in
 * server/scheduler/.)
 */
describe('a protection group backs itself up on schedule', () => {
  let server: TestServer;
  let alpha: TestAgent;
  let work: string;
  let src: string;

  beforeAll(async () => {
    server = await startServer({ extraArgs: ['--time-zone', 'UTC'] });
    alpha = await startAgent(server, 'alpha');
    work = await tempDir('scheduled');
    src = path.join(work, 'src');
    await mkdir(src, { recursive: true });
    await writeFile(path.join(src, 'report.bin'), randomBytes(300_000));
  }, 120_000);

  afterAll(async () => {
    await alpha?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('runs a backup at the next recovery-point time', async () => {
    // The next whole minute at least 20 s away, in UTC (the server's --time-zone).
    const at = new Date(Math.ceil((Date.now() + 20_000) / 60_000) * 60_000);
    const hhmm = at.toISOString().slice(11, 16);
    const yaml = `
groups:
  - name: nightly
    members:
      - { agent: alpha, path: ${src} }
    disk:
      retentionDays: 7
      syncEvery: rp-only
      recoveryPoints: { days: [sun, mon, tue, wed, thu, fri, sat], times: ["${hhmm}"] }
`;
    await server.api('POST', '/config/apply', { yaml, dryRun: false });
    expect(await server.api<unknown[]>('GET', '/jobs')).toEqual([]);

    const job = await waitFor(
      `the ${hhmm} backup to be queued`,
      async () => (await server.api<JobDetail[]>('GET', '/jobs')).find((j) => j.type === 'backup'),
      at.getTime() - Date.now() + 30_000,
    );
    expect(Date.now()).toBeGreaterThanOrEqual(at.getTime());
    expect(job).toMatchObject({ trigger: 'schedule', maxRetries: 3 });
    const done = await waitJobEnd(server, job.id);
    expect(done.state, done.error ?? '').toBe('succeeded');

    const [rp] = await recoveryPoints(server, done.datasourceId!);
    expect(rp).toMatchObject({ id: done.rpId, origin: 'recovery-point', status: 'ok' });
    const target = path.join(work, 'restored');
    expect((await restore(server, rp!.id, target)).state).toBe('succeeded');
    expect(await fileHashes(target)).toEqual(await fileHashes(src));
    // One slot, one job: nothing else was queued meanwhile.
    expect((await server.api<JobDetail[]>('GET', '/jobs')).filter((j) => j.type === 'backup')).toHaveLength(
      1,
    );
  }, 150_000);
});
