import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, readFile, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GcReport } from '../server/gc/gc.ts';
import type { VerifyReport } from '../server/verify/verify.ts';
import {
  addDatasource,
  backup,
  fileHashes,
  flatThrottle,
  KiB,
  MiB,
  recoveryPoints,
  requestBackup,
  restore,
  runAgent,
  runJob,
  setThrottle,
  sleep,
  waitJobEnd,
  waitJobUntil,
} from './e2e-helpers.ts';
import {
  adminArgs,
  cli,
  startAgent,
  startServer,
  stopProcess,
  type TestAgent,
  type TestServer,
  tempDir,
} from './harness.ts';

/*
 * Garbage collection beside running backups, through real processes. The server keeps no grace
 * at all (--gc-grace 0s: backups touch every block they reuse, and a collection keeps only what
 * a committed point names or a running backup may count on), and collections run back to back
 * the whole time backups run, mutated data between them. One backup is cut off (its agent
 * killed) and fails after the resume window: what it stored is owned but named by no point, so
 * the next backup's reuse races the sweep. Every backup must succeed, every recovery point must
 * restore byte-identical, and verify must find nothing damaged.
 */
describe('garbage collection concurrent with backups', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  let src: string;
  let ds: string;
  const points: { rpId: string; files: Map<string, string> }[] = [];
  const reports: GcReport[] = [];

  /** Collections back to back until stopped; any failure fails the test. */
  function gcLoop(): { stop(): Promise<void> } {
    let running = true;
    const loop = (async () => {
      while (running) {
        const job = await runJob(server, { type: 'gc', graceMs: 0 });
        if (job.state !== 'succeeded') throw new Error(`gc job ${job.state}: ${job.error}`);
        reports.push(job.result as GcReport);
        await sleep(5);
      }
    })();
    return {
      async stop() {
        running = false;
        await loop;
      },
    };
  }

  const file = (name: string) => path.join(src, name);
  const randomFile = (name: string, size: number) => writeFile(file(name), randomBytes(size));

  async function backupNow(): Promise<void> {
    const job = await backup(server, ds);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    points.push({ rpId: job.rpId!, files: await fileHashes(src) });
  }

  beforeAll(async () => {
    server = await startServer({ extraArgs: ['--gc-grace', '0s', '--resume-window', '2s'] });
    agent = await startAgent(server, 'collector');
    work = await tempDir('gc-e2e');
    src = path.join(work, 'src');
    await mkdir(path.join(src, 'sub'), { recursive: true });
    for (let i = 0; i < 24; i++) await randomFile(`f${i}.bin`, 20 * KiB + i * 9 * KiB);
    for (let i = 0; i < 6; i++) await randomFile(`sub/s${i}.bin`, 150 * KiB);
    ds = await addDatasource(server, { agent: 'collector', path: src, blockSize: 64 * KiB });
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('never removes a block that a committed or running recovery point needs', async () => {
    let gc = gcLoop();
    await backupNow();
    const firstVersion = new Map<string, Buffer>();
    for (const name of ['f1.bin', 'f5.bin', 'f9.bin']) firstVersion.set(name, await readFile(file(name)));

    // Incremental backups of mutated data, collections running all along.
    for (let round = 1; round <= 4; round++) {
      for (let i = 0; i < 24; i += 4)
        await randomFile(`f${(i + round) % 24}.bin`, 30 * KiB + round * 7 * KiB);
      await appendFile(file(`sub/s${round % 6}.bin`), randomBytes(70 * KiB));
      await randomFile(`new-${round}.bin`, 200 * KiB);
      if (round > 1) await unlink(file(`new-${round - 1}.bin`));
      await backupNow();
    }

    // A backup cut off part way: slow it down, kill the agent once doomed.bin and part of
    // reused.bin are stored (files are read in name order).
    await randomFile('doomed.bin', 2 * MiB);
    // Large enough that the job is seen past 2.5 MiB well before it would end (progress lags ~1 s).
    await randomFile('reused.bin', 3 * MiB);
    await setThrottle(server, 'collector', flatThrottle(512 * KiB));
    const cut = await requestBackup(server, ds);
    await waitJobUntil(server, cut, '2.5 MiB sent', (j) => j.state === 'running' && j.bytesSent >= 2.5 * MiB);
    await stopProcess(agent.proc, 'SIGKILL');
    // Collections stop while the job still waits to resume (which protects its blocks), so that
    // nothing sweeps them between its failure and the next backup.
    await gc.stop();
    const failed = await waitJobEnd(server, cut, 30_000);
    expect(failed.state).toBe('failed');
    expect(failed.error).toMatch(/did not come back/);

    // What it stored is owned and named by no point. The next backup (still slow: a new file
    // comes after reused.bin) reuses those blocks, and only then do collections start, while it
    // runs: its reuse must have protected them (touch), or the sweep takes them and the backup
    // fails or commits a point that cannot be restored.
    await unlink(file('doomed.bin'));
    await randomFile('zzz-slow.bin', 1.5 * MiB);
    agent = await runAgent(server, 'collector', agent.stateDir);
    const reusing = await requestBackup(server, ds);
    await waitJobUntil(
      server,
      reusing,
      'blocks on the wire',
      (j) => j.state === 'running' && j.bytesSent > 0,
    );
    gc = gcLoop();
    const job = await waitJobEnd(server, reusing, 60_000);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    // It did reuse what the cut-off backup stored of reused.bin (so it sent less than both files).
    expect(job.bytesSent).toBeLessThan(4.5 * MiB);
    points.push({ rpId: job.rpId!, files: await fileHashes(src) });
    await setThrottle(server, 'collector', null);

    // One more round: some files go back to their first version (blocks the first point names).
    await unlink(file('reused.bin'));
    for (const [name, bytes] of firstVersion) await writeFile(file(name), bytes);
    await backupNow();
    await gc.stop();

    const dry = await cli(['gc', '--grace', '0s', '--dry-run', ...adminArgs(server)]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(
      /^garbage collection \(dry run: nothing was changed\): .*\n {2}marked: \d+ blocks/,
    );
    // A last collection with nothing running (the cut-off is now), through the CLI.
    const last = await cli(['gc', '--grace', '0s', ...adminArgs(server), '--json']);
    expect(last.code, last.stderr).toBe(0);
    expect(last.json).toMatchObject({ dryRun: false, graceMs: 0 });
    reports.push(last.json);
    expect(reports.length).toBeGreaterThan(5);
    // The collections did real work: the cut-off backup's orphan blocks were freed, and its
    // pack was deleted or rewritten.
    expect(reports.reduce((n, r) => n + r.chunksFreed, 0)).toBeGreaterThan(0);
    expect(reports.reduce((n, r) => n + r.packsDeleted + r.packsRewritten, 0)).toBeGreaterThan(0);
    expect(reports.every((r) => r.graceMs === 0)).toBe(true);

    // Every point restores byte-identical.
    const rps = await recoveryPoints(server, ds);
    expect(rps.map((r) => r.id).sort()).toEqual(points.map((p) => p.rpId).sort());
    for (const [i, p] of points.entries()) {
      const target = path.join(work, `restore-${i}`);
      const job = await restore(server, p.rpId, target);
      expect(job, job.error ?? '').toMatchObject({ state: 'succeeded' });
      expect(await fileHashes(target)).toEqual(p.files);
    }

    // And verify finds every block intact.
    const verified = await cli(['verify', ...adminArgs(server), '--json']);
    expect(verified.code, verified.stderr).toBe(0);
    const report = verified.json as VerifyReport;
    expect(report).toMatchObject({ rpsChecked: points.length, corruptBlocks: [], corruptRps: [] });
    expect(report.blocksChecked).toBeGreaterThan(0);
    const one = await cli(['verify', '--rp', points[0]!.rpId, '--rp', points[1]!.rpId, ...adminArgs(server)]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/^verified 2 recovery points: .*\nno damaged or missing blocks\n$/);
  });
});
