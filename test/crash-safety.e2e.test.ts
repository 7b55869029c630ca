import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChunkStore } from '../server/chunk-store/chunk-store.ts';
import { scanPack } from '../server/chunk-store/pack-format.ts';
import {
  type JobView,
  type Proc,
  spawnHoldfast,
  startAgent,
  startServer,
  stopProcess,
  type TestAgent,
  type TestServer,
  tempDir,
  waitFor,
  waitForJob,
} from './harness.ts';
import { cutInMemory } from '../agent/backup/content-chunker.test-helpers.ts';
import { DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE } from '../protocol/version.ts';
import { distinctBytes, fileHashes, newBlockBytes } from './e2e-helpers.ts';

const MiB = 1024 * 1024;

/*
 * Crash safety through real processes. A server or an agent killed with SIGKILL in the middle
 * of a backup never leaves a recovery point for the unfinished work and never anything corrupt:
 *  - within the resume window the same job resumes once both are back, and its one recovery
 *    point restores byte-identically;
 *  - an agent that stays away longer than the window fails the job with a clear reason, and the
 *    next backup succeeds, reusing the blocks that were already acknowledged.
 * Every complete record in every pack, including the dead space of the killed attempt, is read
 * back and checked against its hash.
 */

interface RecoveryPointView {
  id: string;
  jobId: string;
  files: number;
  bytes: number;
}

/** The job view with the resume fields (harness JobView predates them). */
type Job = JobView & { attempts: number; interruptedAt: string | null };

interface Data {
  /** SHA-256 by relative path. */
  files: Map<string, string>;
  bytes: number;
  /** Blocks the agent cuts the files into (default block size), all distinct. */
  blocks: number;
}

/** Writes `count` files of 8-12 MiB (plus an odd tail) of distinct bytes. */
async function makeData(dir: string, count: number): Promise<Data> {
  await mkdir(dir, { recursive: true });
  const tag = randomBytes(8).toString('hex');
  const files = new Map<string, string>();
  let bytes = 0;
  let blocks = 0;
  for (let i = 0; i < count; i++) {
    const size = (8 + (i % 5)) * MiB + i * 4099;
    const buf = distinctBytes(`${tag}:${i}`, size);
    const rel = `part-${String(i).padStart(3, '0')}.bin`;
    await writeFile(path.join(dir, rel), buf);
    files.set(rel, createHash('sha256').update(buf).digest('hex'));
    bytes += size;
    blocks += cutInMemory(buf, DEFAULT_BLOCK_SIZE.files).length;
  }
  return { files, bytes, blocks };
}

/** Bytes of every file under `<dataDir>/store`, whatever its layout. */
async function storeBytes(dataDir: string): Promise<number> {
  const root = path.join(dataDir, 'store');
  let total = 0;
  for (const d of await readdir(root, { recursive: true, withFileTypes: true }).catch(() => [])) {
    if (d.isFile()) total += (await stat(path.join(d.parentPath, d.name)).catch(() => ({ size: 0 }))).size;
  }
  return total;
}

/**
 * Reads back every complete record of every pack (including the dead space a killed backup
 * left behind) through ChunkStore.readVerified, which decodes it and checks it against its
 * hash. A torn record at the very end of a pack is allowed: the index never points at it.
 * Returns the distinct block hashes found.
 */
async function verifyChunkStore(dataDir: string): Promise<Set<string>> {
  const store = await ChunkStore.open(path.join(dataDir, 'store'));
  const hashes = new Set<string>();
  try {
    const packsDir = path.join(dataDir, 'store', 'packs');
    for (const d of await readdir(packsDir, { recursive: true, withFileTypes: true })) {
      if (!d.isFile()) continue;
      expect(d.name).toMatch(/^[0-9a-f]{32}\.pack$/);
      const pack = d.name.slice(0, -'.pack'.length);
      const fh = await open(path.join(d.parentPath, d.name), 'r');
      try {
        if ((await fh.stat()).size < 4) continue; // created, killed before its magic: nothing refers to it
        for await (const rec of scanPack(fh)) {
          await store.readVerified({ ...rec, pack });
          hashes.add(rec.hash);
        }
      } finally {
        await fh.close();
      }
    }
  } finally {
    await store.close();
  }
  return hashes;
}

/** Starts a backup; returns once the job runs and at least `minBytes` more are in the chunk store. */
async function startBackupAndWaitForStoredBytes(server: TestServer, datasourceId: string, minBytes: number) {
  const before = await storeBytes(server.dataDir);
  const job = await server.api<Job>('POST', '/backups', { datasourceId });
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (Date.now() > deadline) throw new Error('backup did not start storing blocks within 60 s');
    const view = await server.api<Job>('GET', `/jobs/${job.id}`);
    expect(['queued', 'running'], `job ended before the kill: ${JSON.stringify(view)}`).toContain(view.state);
    if (view.state === 'running' && (await storeBytes(server.dataDir)) - before >= minBytes) return job;
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function expectStillRunning(server: TestServer, jobId: string): Promise<void> {
  const view = await server.api<Job>('GET', `/jobs/${jobId}`);
  expect(view.state, 'the backup must still be running when it is killed').toBe('running');
}

async function waitOnline(server: TestServer, agentId: string): Promise<void> {
  await waitFor(
    'agent online',
    async () => {
      const list = await server.api<{ id: string; online: boolean }[]>('GET', '/agents');
      return list.find((a) => a.id === agentId && a.online) ? true : undefined;
    },
    60_000,
  );
}

const recoveryPoints = (server: TestServer, datasourceId: string) =>
  server.api<RecoveryPointView[]>('GET', `/recovery-points?datasourceId=${datasourceId}`);

/** Committed manifests (a manifest gets its final name only when its backup commits). */
const committedManifests = async (server: TestServer) =>
  (await readdir(path.join(server.dataDir, 'manifests'))).filter((n) => n.endsWith('.manifest'));

async function restoreAndCompare(
  server: TestServer,
  rpId: string,
  target: string,
  expected: Map<string, string>,
) {
  const job = await server.api<Job>('POST', '/restores', { rpId, target });
  const done = await waitForJob(server, job.id);
  expect(done.state, done.error ?? '').toBe('succeeded');
  const got = await fileHashes(target);
  expect([...got.keys()]).toEqual([...expected.keys()].sort());
  for (const [rel, sha] of expected) expect(got.get(rel), rel).toBe(sha);
}

describe('killing the server mid-backup', () => {
  let server: TestServer;
  let agent: TestAgent;
  let work: string;
  let src: string;
  let datasourceId: string;
  let data: Data;
  let jobId: string;
  let done: Job;

  beforeAll(async () => {
    work = await tempDir('crash-server');
    src = path.join(work, 'src');
    [server, data] = await Promise.all([startServer({ tls: false }), makeData(src, 24)]);
    agent = await startAgent(server, 'crashy');
    datasourceId = (await server.api<{ id: string }>('POST', '/datasources', { agent: 'crashy', path: src }))
      .id;
  });

  afterAll(async () => {
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('leaves no recovery point; the job waits to resume', async () => {
    jobId = (await startBackupAndWaitForStoredBytes(server, datasourceId, 8 * MiB)).id;
    await expectStillRunning(server, jobId);
    await server.restart('SIGKILL');

    const after = await server.api<Job>('GET', `/jobs/${jobId}`);
    // Either still waiting for its agent, marked interrupted, or already taken up again by the
    // agent that reconnected meanwhile: then as a second attempt of the same job.
    if (after.state === 'queued') expect(after.interruptedAt).not.toBeNull();
    else {
      expect(after.state).toBe('running');
      expect(after.attempts).toBeGreaterThanOrEqual(2);
    }
    expect(after.error).toBeNull();
    expect(after.rpId).toBeNull();
    expect(await recoveryPoints(server, datasourceId)).toEqual([]);
    expect(await committedManifests(server)).toEqual([]);
  });

  it('the agent reconnects by itself and the same job resumes and succeeds', async () => {
    await waitOnline(server, agent.id);
    expect(agent.proc.child.exitCode).toBeNull();
    done = (await waitForJob(server, jobId)) as Job;
    expect(done.state, done.error ?? '').toBe('succeeded');
    expect(done.attempts).toBeGreaterThanOrEqual(2);
    expect(done.warnings).toEqual([]);
    expect(done.files).toBe(data.files.size);
    expect(done.bytesScanned).toBe(data.bytes);
    const rps = await recoveryPoints(server, datasourceId);
    expect(rps.map((r) => r.id)).toEqual([done.rpId]);
    expect(rps[0]).toMatchObject({ jobId, files: data.files.size, bytes: data.bytes });
    expect(await committedManifests(server)).toEqual([`${done.rpId}.manifest`]);
  });

  it('the recovery point restores byte-identically', async () => {
    await restoreAndCompare(server, done.rpId!, path.join(work, 'restore-1'), data.files);
  });

  it('every block in the store, including those of the killed attempt, decodes and matches its hash', async () => {
    // The killed attempt stored a subset of the same blocks: exactly one distinct hash per block.
    expect((await verifyChunkStore(server.dataDir)).size).toBe(data.blocks);
  });

  it('an incremental after changing one file sends only the changed block', async () => {
    const rel = 'part-007.bin';
    const before = await readFile(path.join(src, rel));
    const fh = await open(path.join(src, rel), 'r+');
    await fh.write(randomBytes(100), 0, 100, 3 * MiB + 12345);
    await fh.close();
    const changed = await fileHashes(src);
    expect(changed.get(rel)).not.toBe(data.files.get(rel));

    const job = await server.api<Job>('POST', '/backups', { datasourceId });
    const second = await waitForJob(server, job.id);
    expect(second.state, second.error ?? '').toBe('succeeded');
    expect(second.files).toBe(data.files.size);
    expect(second.bytesSent).toBeGreaterThan(0);
    expect(second.bytesSent).toBe(newBlockBytes(before, await readFile(path.join(src, rel))));
    expect(second.bytesSent).toBeLessThanOrEqual(MAX_BLOCK_SIZE);
    expect(second.bytesSent * 50).toBeLessThan(data.bytes);

    const target = path.join(work, 'restore-2');
    const restore = await server.api<Job>('POST', '/restores', { rpId: second.rpId, target, paths: [rel] });
    const restored = await waitForJob(server, restore.id);
    expect(restored.state, restored.error ?? '').toBe('succeeded');
    expect(await fileHashes(target)).toEqual(new Map([[rel, changed.get(rel)!]]));
  });
});

describe('killing the agent mid-backup', () => {
  let server: TestServer;
  let agent: TestAgent;
  let respawned: Proc | undefined;
  let work: string;
  let src: string;
  let datasourceId: string;
  let data: Data;
  let jobId: string;

  beforeAll(async () => {
    work = await tempDir('crash-agent');
    src = path.join(work, 'src');
    [server, data] = await Promise.all([startServer({ tls: false }), makeData(src, 16)]);
    agent = await startAgent(server, 'victim');
    datasourceId = (await server.api<{ id: string }>('POST', '/datasources', { agent: 'victim', path: src }))
      .id;
  });

  afterAll(async () => {
    if (respawned) await stopProcess(respawned);
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('puts the job back in the queue and leaves no recovery point', async () => {
    jobId = (await startBackupAndWaitForStoredBytes(server, datasourceId, 8 * MiB)).id;
    await expectStillRunning(server, jobId);
    await stopProcess(agent.proc, 'SIGKILL');

    // Within the resume window a dropped link puts the backup back in the queue for its agent.
    const waiting = await waitFor('the job to leave "running"', async () => {
      const view = await server.api<Job>('GET', `/jobs/${jobId}`);
      return view.state === 'running' ? undefined : view;
    });
    expect(waiting.state, waiting.error ?? '').toBe('queued');
    expect(waiting.interruptedAt).not.toBeNull();
    expect(waiting.error).toBeNull();
    expect(waiting.rpId).toBeNull();
    expect(await recoveryPoints(server, datasourceId)).toEqual([]);
    expect(await committedManifests(server)).toEqual([]);
  });

  it('after the agent starts again with the same state, the job resumes, succeeds and restores byte-identically', async () => {
    respawned = spawnHoldfast(['agent', 'run', '--state', agent.stateDir, '--log-level', 'warn']);
    await waitOnline(server, agent.id);

    const done = (await waitForJob(server, jobId)) as Job;
    expect(done.state, `${done.error}\n${respawned.output()}`).toBe('succeeded');
    expect(done.attempts).toBeGreaterThanOrEqual(2);
    expect(done.warnings).toEqual([]);
    expect(done.files).toBe(data.files.size);
    const rps = await recoveryPoints(server, datasourceId);
    expect(rps.map((r) => r.id)).toEqual([done.rpId]);

    await restoreAndCompare(server, done.rpId!, path.join(work, 'restore'), data.files);
    expect((await verifyChunkStore(server.dataDir)).size).toBe(data.blocks);
  });
});

describe('an agent killed mid-backup that stays away longer than the resume window', () => {
  let server: TestServer;
  let agent: TestAgent;
  let respawned: Proc | undefined;
  let work: string;
  let src: string;
  let datasourceId: string;
  let data: Data;

  beforeAll(async () => {
    work = await tempDir('crash-window');
    src = path.join(work, 'src');
    [server, data] = await Promise.all([
      startServer({ extraArgs: ['--resume-window', '2s'] }),
      makeData(src, 20),
    ]);
    agent = await startAgent(server, 'gone');
    datasourceId = (await server.api<{ id: string }>('POST', '/datasources', { agent: 'gone', path: src }))
      .id;
  });

  afterAll(async () => {
    if (respawned) await stopProcess(respawned);
    await agent?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('fails the job with a clear reason and leaves no recovery point', async () => {
    const job = await startBackupAndWaitForStoredBytes(server, datasourceId, 24 * MiB);
    // Let the group commit acknowledge what is stored (it flushes every 100 ms or 16 MiB).
    await new Promise((r) => setTimeout(r, 300));
    await expectStillRunning(server, job.id);
    await stopProcess(agent.proc, 'SIGKILL');

    const failed = (await waitForJob(server, job.id, 30_000)) as Job;
    expect(failed.state).toBe('failed');
    // It waited in the queue for the resume window, then expired saying why.
    expect(failed.error).toMatch(/agent did not come back within 2 s/);
    expect(failed.interruptedAt).not.toBeNull();
    expect(failed.rpId).toBeNull();
    expect(await recoveryPoints(server, datasourceId)).toEqual([]);
    expect(await committedManifests(server)).toEqual([]);
  });

  it('the next backup succeeds, reuses the blocks already acknowledged, and restores byte-identically', async () => {
    respawned = spawnHoldfast(['agent', 'run', '--state', agent.stateDir, '--log-level', 'warn']);
    await waitOnline(server, agent.id);

    const job = await server.api<Job>('POST', '/backups', { datasourceId });
    const done = await waitForJob(server, job.id);
    expect(done.state, `${done.error}\n${respawned.output()}`).toBe('succeeded');
    expect(done.warnings).toEqual([]);
    expect(done.files).toBe(data.files.size);
    expect(done.bytesScanned).toBe(data.bytes);
    expect(done.bytesSent).toBeLessThan(data.bytes);
    const rps = await recoveryPoints(server, datasourceId);
    expect(rps.map((r) => r.id)).toEqual([done.rpId]);

    await restoreAndCompare(server, done.rpId!, path.join(work, 'restore'), data.files);
    expect((await verifyChunkStore(server.dataDir)).size).toBe(data.blocks);
  });
});
