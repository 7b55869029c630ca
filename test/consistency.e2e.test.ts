import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDatasource, backup, recoveryPoints } from './e2e-helpers.ts';
import { startAgent, startServer, type TestAgent, type TestServer, tempDir } from './harness.ts';

/*
 * Pre- and post-backup scripts through real processes (DPM-style application consistency):
 * the agent runs them around the read with HOLDFAST_JOB_ID in their environment; a backup
 * whose pre script succeeded is app-consistent; a failing pre script fails the job but the
 * post script still runs; a failing post script is a warning. Without scripts, a tree that
 * does not change while read is file-consistent.
 */
describe('pre/post scripts and recovery point consistency', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  let marks: string;

  const makeTree = async (name: string) => {
    const dir = path.join(work, name);
    await mkdir(path.join(dir, 'sub'), { recursive: true });
    await writeFile(path.join(dir, 'a.txt'), `${name}\n`);
    await writeFile(path.join(dir, 'sub/b.txt'), 'b'.repeat(10_000));
    return dir;
  };
  const exists = (p: string) =>
    stat(p).then(
      () => true,
      () => false,
    );

  beforeAll(async () => {
    server = await startServer();
    agent = await startAgent(server, 'scripted');
    work = await tempDir('scripts');
    marks = path.join(work, 'marks');
    await mkdir(marks);
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('runs both scripts with the job id; the recovery point is app-consistent', async () => {
    const src = await makeTree('app');
    const id = await addDatasource(server, {
      agent: 'scripted',
      path: src,
      preScript: `echo "pre $HOLDFAST_JOB_ID" > ${marks}/pre`,
      postScript: `echo "post $HOLDFAST_JOB_ID" > ${marks}/post`,
    });
    const job = await backup(server, id);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null, warnings: [] });
    expect((await readFile(path.join(marks, 'pre'), 'utf8')).trim()).toBe(`pre ${job.id}`);
    expect((await readFile(path.join(marks, 'post'), 'utf8')).trim()).toBe(`post ${job.id}`);
    const [rp] = await recoveryPoints(server, id);
    expect(rp).toMatchObject({ id: job.rpId, consistency: 'app-consistent' });
  });

  it('a failing pre script fails the job (exit status in the error) and the post script still runs', async () => {
    const src = await makeTree('prefail');
    const id = await addDatasource(server, {
      agent: 'scripted',
      path: src,
      preScript: 'echo cannot freeze the database >&2; exit 7',
      postScript: `echo "post $HOLDFAST_JOB_ID" > ${marks}/post-after-failure`,
    });
    const job = await backup(server, id);
    expect(job.state).toBe('failed');
    expect(job.error).toMatch(/pre-backup script/);
    expect(job.error).toMatch(/exit(ed)?( with| status| code)? 7\b/);
    expect(job.rpId).toBeNull();
    expect((await readFile(path.join(marks, 'post-after-failure'), 'utf8')).trim()).toBe(`post ${job.id}`);
    expect(await recoveryPoints(server, id)).toEqual([]);
  });

  it('a failing post script leaves the job succeeded with a warning naming the post-backup script', async () => {
    const src = await makeTree('postfail');
    const id = await addDatasource(server, {
      agent: 'scripted',
      path: src,
      postScript: 'echo thaw failed >&2; exit 3',
    });
    const job = await backup(server, id);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null });
    expect(job.rpId).toBeTruthy();
    expect(job.warnings.some((w) => /post-backup script/.test(w))).toBe(true);
    expect(job.warnings.join('\n')).toMatch(/3/);
    expect(await exists(path.join(marks, 'post-after-failure'))).toBe(true);
  });

  it('without scripts, a quiet tree gives a file-consistent recovery point', async () => {
    const src = await makeTree('quiet');
    const id = await addDatasource(server, { agent: 'scripted', path: src });
    const job = await backup(server, id);
    expect(job, job.error ?? '').toMatchObject({ state: 'succeeded', error: null, warnings: [] });
    const [rp] = await recoveryPoints(server, id);
    expect(rp).toMatchObject({ id: job.rpId, consistency: 'file-consistent' });
  });
});
