import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { runScript } from './scripts.ts';

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-scripts-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function failure(p: Promise<void>): Promise<string> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Error);
  return (err as Error).message;
}

describe('runScript', () => {
  it('resolves when the script exits 0', async () => {
    const out = path.join(dir, 'ran');
    await expect(runScript('pre-backup', `echo noise; echo ok > "${out}"`, {})).resolves.toBeUndefined();
    expect(await readFile(out, 'utf8')).toBe('ok\n');
  });

  it('rejects with the exit code and the tail of what the script printed', async () => {
    // Far more output than is kept: only the end, with the cause, makes it into the error.
    const script =
      'i=0; while [ $i -lt 300 ]; do echo "line $i of chatter" >&2; i=$((i+1)); done; echo "FATAL: database is locked" >&2; exit 3';
    const message = await failure(runScript('post-backup', script, {}));
    expect(message).toMatch(/^post-backup script exited with 3: /);
    expect(message).toContain('FATAL: database is locked');
    expect(message).not.toContain('line 0 of chatter');
    expect(message.length).toBeLessThan(2100);
  });

  it('rejects without output when there was none', async () => {
    expect(await failure(runScript('pre-backup', 'exit 7', {}))).toBe('pre-backup script exited with 7');
  });

  it('passes the job variables on, with the agent environment', async () => {
    const out = path.join(dir, 'env');
    await runScript(
      'pre-backup',
      `printf '%s|%s|%s' "$HOLDFAST_JOB_ID" "$HOLDFAST_PATH" "$PATH" > "${out}"`,
      { HOLDFAST_JOB_ID: 'job-42', HOLDFAST_PATH: '/srv/data with spaces' },
    );
    const [jobId, p, inheritedPath] = (await readFile(out, 'utf8')).split('|');
    expect(jobId).toBe('job-42');
    expect(p).toBe('/srv/data with spaces');
    expect(inheritedPath).toBe(process.env.PATH);
  });

  it('kills a script that runs past its timeout', async () => {
    const started = Date.now();
    const message = await failure(runScript('pre-backup', 'exec sleep 5', {}, 200));
    expect(message).toBe('pre-backup script was killed by SIGKILL');
    expect(Date.now() - started).toBeLessThan(2000);
  });

  // A background process started by the script (or a child of a timed-out one) may keep the
  // output pipes open: the run must end when the script exits, or at the timeout.
  it('settles when the script exits even if it left a background process running', async () => {
    const started = Date.now();
    await runScript('pre-backup', 'sleep 1 & exit 0', {});
    expect(Date.now() - started).toBeLessThan(700);
  });

  it('settles at the timeout even when the script has a child process', async () => {
    const started = Date.now();
    await failure(runScript('pre-backup', 'sleep 1; echo done', {}, 100));
    expect(Date.now() - started).toBeLessThan(700);
  });
});
