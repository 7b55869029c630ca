import { createHash, randomBytes } from 'node:crypto';
import { chmod, chown, lstat, mkdir, readdir, rm, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type JobView,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
  waitForJob,
} from './harness.ts';
import { fileHashes } from './e2e-helpers.ts';

/*
 * A file that cannot be read, or that vanishes while the backup runs, is skipped with a
 * warning that names it; the backup still succeeds and its recovery point restores everything
 * else byte-identically.
 *
 * Tests run as root in CI, where mode 000 does not stop reads, so the agent process runs as
 * nobody (65534) when we are root. Otherwise the agent runs as us and mode 000 works as is.
 */

const NOBODY = 65534;
const asRoot = process.getuid?.() === 0;

/** Folders 0755 and files 0644 all the way down, so an unprivileged agent can read them. */
async function makeWorldReadable(root: string): Promise<void> {
  await chmod(root, 0o755);
  for (const d of await readdir(root, { recursive: true, withFileTypes: true })) {
    await chmod(path.join(d.parentPath, d.name), d.isDirectory() ? 0o755 : 0o644);
  }
}

/** A restore target the agent can write to. */
async function restoreTarget(dir: string): Promise<string> {
  await mkdir(dir, { mode: 0o755 });
  if (asRoot) await chown(dir, NOBODY, NOBODY);
  return dir;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('unreadable and vanishing files', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  /** Folders left at mode 000 by a test, opened up again before cleanup. */
  const locked: string[] = [];

  const restore = async (rpId: string, target: string, paths: string[] = []) => {
    const job = await server.api<JobView>('POST', '/restores', { rpId, target, paths });
    return waitForJob(server, job.id);
  };

  beforeAll(async () => {
    server = await startServer({ tls: false });
    agent = await startAgent(server, 'unprivileged', asRoot ? { uid: NOBODY, gid: NOBODY } : {});
    work = await tempDir('unreadable');
    // mkdtemp makes it 0700; the agent must be able to walk into it.
    await chmod(work, 0o755);
  });

  afterAll(async () => {
    for (const dir of locked) await chmod(dir, 0o700).catch(() => {});
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('skips a mode-000 file and a mode-000 folder with warnings naming them; the rest restores', async () => {
    const src = path.join(work, 'src');
    await mkdir(path.join(src, 'docs'), { recursive: true });
    await mkdir(path.join(src, 'nested/deep'), { recursive: true });
    await mkdir(path.join(src, 'locked'));
    await writeFile(path.join(src, 'a.txt'), 'alpha\n');
    await writeFile(path.join(src, 'empty.txt'), '');
    await writeFile(path.join(src, 'docs/b.bin'), randomBytes(1024 * 1024 + 333));
    await writeFile(path.join(src, 'nested/deep/c.txt'), 'deep\n');
    await writeFile(path.join(src, 'secret.txt'), 'nobody may read this');
    await writeFile(path.join(src, 'locked/inner.txt'), 'behind a locked door');
    await makeWorldReadable(src);
    const expected = await fileHashes(src);
    expected.delete('secret.txt');
    expected.delete('locked/inner.txt');
    await chmod(path.join(src, 'secret.txt'), 0o000);
    await chmod(path.join(src, 'locked'), 0o000);
    locked.push(path.join(src, 'locked'));

    const ds = await server.api<{ id: string }>('POST', '/datasources', { agent: agent.name, path: src });
    const job = await server.api<JobView>('POST', '/backups', { datasourceId: ds.id });
    const done = await waitForJob(server, job.id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    expect(done.error).toBeNull();
    expect(done.warnings).toHaveLength(2);
    const secretWarning = done.warnings.find((w) => w.includes(path.join(src, 'secret.txt')));
    const lockedWarning = done.warnings.find((w) => w.includes(path.join(src, 'locked')));
    expect(secretWarning, done.warnings.join('\n')).toMatch(/EACCES/);
    expect(lockedWarning, done.warnings.join('\n')).toMatch(/EACCES/);
    expect(done.files).toBe(expected.size);

    const rps = await server.api<{ id: string; files: number }[]>(
      'GET',
      `/recovery-points?datasourceId=${ds.id}`,
    );
    expect(rps).toHaveLength(1);
    expect(rps[0]).toMatchObject({ id: done.rpId, files: expected.size });

    const target = await restoreTarget(path.join(work, 'restore-unreadable'));
    const restored = await restore(done.rpId!, target);
    expect(restored.state, restored.error ?? '').toBe('succeeded');
    expect(restored.files).toBe(expected.size);
    // The locked folder's metadata was readable, so it may be recorded, but only as an empty folder.
    const lockedCopy = path.join(target, 'locked');
    const st = await lstat(lockedCopy).catch(() => undefined);
    if (st) {
      expect(st.isDirectory()).toBe(true);
      locked.push(lockedCopy);
      await chmod(lockedCopy, 0o700);
      expect(await readdir(lockedCopy)).toEqual([]);
    }
    expect(await fileHashes(target)).toEqual(expected);

    // Neither skipped file is in the recovery point.
    for (const p of ['secret.txt', 'locked/inner.txt']) {
      const one = await restore(
        done.rpId!,
        await restoreTarget(path.join(work, `restore-${p.replace('/', '-')}`)),
        [p],
      );
      expect(one.state).toBe('failed');
      expect(one.error).toContain(p);
    }
  });

  it('files deleted while the backup runs give warnings, never a failure', async () => {
    const src = path.join(work, 'vanish');
    const original = new Map<string, string>();
    const dirs = Array.from({ length: 10 }, (_, i) => `d${i}`);
    for (const d of dirs) await mkdir(path.join(src, d), { recursive: true });
    const seed = randomBytes(64 * 1024);
    for (let i = 0; i < 3000; i++) {
      const rel = `${dirs[i % dirs.length]}/f${String(i).padStart(4, '0')}.bin`;
      const data = Buffer.concat([Buffer.from(`${i}:`), seed.subarray(0, 4096 + ((i * 7919) % (60 * 1024)))]);
      await writeFile(path.join(src, rel), data);
      original.set(rel, sha(data));
    }
    await makeWorldReadable(src);

    // Delete a third of the files, in random order, plus one whole folder.
    const victims = [...original.keys()].filter(() => Math.random() < 1 / 3).sort(() => Math.random() - 0.5);
    const victimDir = 'd7';
    const deleted = new Set<string>();

    const ds = await server.api<{ id: string }>('POST', '/datasources', { agent: agent.name, path: src });
    const job = await server.api<JobView>('POST', '/backups', { datasourceId: ds.id });
    for (let i = 0; i < 2000; i++) {
      const view = await server.api<JobView>('GET', `/jobs/${job.id}`);
      if (view.state !== 'queued') break;
      await new Promise((r) => setTimeout(r, 5));
    }
    for (const [i, rel] of victims.entries()) {
      if (rel.startsWith(`${victimDir}/`)) continue;
      deleted.add(rel);
      await unlink(path.join(src, rel));
      if (i === Math.floor(victims.length / 2)) {
        for (const r of original.keys()) if (r.startsWith(`${victimDir}/`)) deleted.add(r);
        await rm(path.join(src, victimDir), { recursive: true });
      }
    }

    const done = await waitForJob(server, job.id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    // Every warning names something that was deleted, never a file that is still there.
    for (const w of done.warnings) {
      const named = path.relative(src, w.slice(0, w.indexOf(': ')));
      const ok = deleted.has(named) || named === victimDir || named.startsWith(`${victimDir}/`);
      expect(ok, `warning about a file that was not deleted: ${w}`).toBe(true);
    }

    const target = await restoreTarget(path.join(work, 'restore-vanish'));
    const restored = await restore(done.rpId!, target);
    expect(restored.state, restored.error ?? '').toBe('succeeded');
    const got = await fileHashes(target);
    expect(got.size).toBe(done.files);
    // Every file that survived is in the recovery point...
    for (const rel of original.keys()) if (!deleted.has(rel)) expect(got.has(rel), rel).toBe(true);
    // ...and everything in it, survivor or read before it was deleted, is byte-identical.
    for (const [rel, hash] of got) expect(hash, rel).toBe(original.get(rel));
    console.info(
      `vanishing files: ${deleted.size} deleted during the backup, ${done.warnings.length} warnings, ` +
        `${[...got.keys()].filter((r) => deleted.has(r)).length} deleted files made it into the recovery point`,
    );
  });
});
