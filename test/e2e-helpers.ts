import { createCipheriv, createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cutInMemory } from '../agent/backup/content-chunker.test-helpers.ts';
import { requestJson } from '../lib/http-client.ts';
import { DEFAULT_BLOCK_SIZE } from '../protocol/version.ts';
import {
  type JobView,
  spawnHoldfast,
  stopProcess,
  type TestAgent,
  type TestServer,
  waitFor,
} from './harness.ts';

/*
 * Helpers shared by the engine e2e tests (image, resume, throttle, memory, consistency):
 * every API method, agents enrolled through another URL or restarted on the same state,
 * job details, process memory, and quick generators of distinct-block data.
 */

export const KiB = 1024;
export const MiB = 1024 * 1024;

/** The job view with the resume and progress fields. */
export interface JobDetail extends JobView {
  agent?: string;
  trigger: string;
  retries: number;
  maxRetries: number;
  result: unknown;
  datasourceId: string | null;
  startedAt: string | null;
  finishedAt: string | null;
  createdAt: string;
  attempts: number;
  blocksSent: number;
  bytesDone: number;
  bytesTotal: number | null;
  interruptedAt: string | null;
  rate: number | null;
  etaSeconds: number | null;
}

export interface RecoveryPointView {
  id: string;
  datasourceId: string;
  jobId: string;
  kind: string;
  origin: string;
  status: 'ok' | 'corrupt';
  verifiedAt: string | null;
  consistency: string;
  bytes: number;
  files: number;
  blocks: number;
}

export interface DatasourceInput {
  agent: string;
  path: string;
  kind?: 'files' | 'image';
  blockSize?: number;
  compress?: boolean;
  preScript?: string | null;
  postScript?: string | null;
}

/** Any method of the REST API (TestServer.api has GET and POST only). */
export function apiCall<T>(
  server: TestServer,
  method: 'GET' | 'POST' | 'PUT' | 'DELETE',
  route: string,
  body?: unknown,
): Promise<T> {
  return requestJson<T>(`${server.url}/api/v1${route}`, {
    method,
    body,
    token: server.token,
    tls: server.tls,
  });
}

export async function addDatasource(server: TestServer, input: DatasourceInput): Promise<string> {
  const ds = await server.api<{ id: string }>('POST', '/datasources', input);
  return ds.id;
}

export async function requestBackup(server: TestServer, datasourceId: string, full = false): Promise<string> {
  const job = await server.api<{ id: string }>('POST', '/backups', { datasourceId, full });
  return job.id;
}

export function getJob(server: TestServer, id: string): Promise<JobDetail> {
  return server.api<JobDetail>('GET', `/jobs/${id}`);
}

const ENDED = ['succeeded', 'failed', 'cancelled'];

/** Polls a job until it ended; `onPoll` sees every intermediate view. */
export async function waitJobEnd(
  server: TestServer,
  id: string,
  timeoutMs = 60_000,
  onPoll?: (job: JobDetail) => void | Promise<void>,
  pollMs = 150,
): Promise<JobDetail> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await getJob(server, id);
    await onPoll?.(job);
    if (ENDED.includes(job.state)) return job;
    if (Date.now() > deadline)
      throw new Error(`job ${id} still ${job.state} after ${timeoutMs} ms: ${JSON.stringify(job)}`);
    await sleep(pollMs);
  }
}

/** Polls a running job until `ready` holds; throws if the job ends first. */
export async function waitJobUntil(
  server: TestServer,
  id: string,
  what: string,
  ready: (job: JobDetail) => boolean,
  timeoutMs = 60_000,
  pollMs = 100,
): Promise<JobDetail> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await getJob(server, id);
    if (ready(job)) return job;
    if (ENDED.includes(job.state))
      throw new Error(`job ${id} ended (${job.state}: ${job.error}) before ${what}: ${JSON.stringify(job)}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(job)}`);
    await sleep(pollMs);
  }
}

/** Backs up and waits; returns the ended job. */
export async function backup(
  server: TestServer,
  datasourceId: string,
  opts: { full?: boolean; timeoutMs?: number } = {},
): Promise<JobDetail> {
  return waitJobEnd(server, await requestBackup(server, datasourceId, opts.full), opts.timeoutMs);
}

/** Restores a recovery point to `target` (a folder, or the image file to write) and waits. */
export async function restore(
  server: TestServer,
  rpId: string,
  target: string,
  timeoutMs = 60_000,
): Promise<JobDetail> {
  const job = await server.api<{ id: string }>('POST', '/restores', { rpId, target });
  return waitJobEnd(server, job.id, timeoutMs);
}

export function recoveryPoints(server: TestServer, datasourceId: string): Promise<RecoveryPointView[]> {
  return server.api<RecoveryPointView[]>('GET', `/recovery-points?datasourceId=${datasourceId}`);
}

export interface ThrottleBody {
  workHoursBps?: number;
  nonWorkHoursBps?: number;
  weekendBps?: number;
  workDays?: number[];
  workStart?: string;
  workEnd?: string;
}

/** The same rate at every hour of every day; null removes the limit. */
export function flatThrottle(bps: number): ThrottleBody {
  return { workHoursBps: bps, nonWorkHoursBps: bps, weekendBps: bps };
}

export function setThrottle(
  server: TestServer,
  agent: string,
  policy: ThrottleBody | null,
): Promise<unknown> {
  return apiCall(server, 'PUT', `/agents/${agent}/throttle`, policy);
}

interface AgentRow {
  id: string;
  name: string;
  online: boolean;
  lastSeenAt: string | null;
  connectedSince: string | null;
}

/**
 * Runs `holdfast agent run` on an enrolled state folder and waits until this process is the
 * one connected (a new connection), so a restart is not mistaken for the old link.
 */
export async function runAgent(server: TestServer, name: string, stateDir: string): Promise<TestAgent> {
  const before = (await server.api<AgentRow[]>('GET', '/agents')).find((a) => a.name === name);
  const proc = spawnHoldfast(['agent', 'run', '--state', stateDir, '--log-level', 'warn']);
  const row = await waitFor(`agent ${name} online`, async () => {
    if (proc.child.exitCode !== null) throw new Error(`agent exited: ${proc.output()}`);
    const a = (await server.api<AgentRow[]>('GET', '/agents')).find((x) => x.name === name);
    return a?.online && a.connectedSince !== before?.connectedSince ? a : undefined;
  });
  return {
    name,
    stateDir,
    id: row.id,
    proc,
    async stop() {
      await stopProcess(proc);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** Resident set size of a process in bytes, from /proc/<pid>/status (VmRSS). */
export async function rssBytes(pid: number): Promise<number | undefined> {
  try {
    const status = await readFile(`/proc/${pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** SHA-256 of every regular file under `root`, keyed by path relative to it. */
export async function fileHashes(root: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const d of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!d.isFile()) continue;
    const abs = path.join(d.parentPath, d.name);
    out.set(path.relative(root, abs), await sha256File(abs));
  }
  return new Map([...out].sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** Bytes of the blocks of `after` that are not blocks of `before`: what a backup must send. */
export function newBlockBytes(before: Buffer, after: Buffer, blockSize = DEFAULT_BLOCK_SIZE.files): number {
  const digest = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  const old = new Set(cutInMemory(before, blockSize).map(digest));
  return cutInMemory(after, blockSize)
    .filter((b) => !old.has(digest(b)))
    .reduce((n, b) => n + b.length, 0);
}

/**
 * Pseudo-random bytes that differ everywhere from those of any other label (an AES-CTR
 * keystream keyed by it): no block cut from them, at fixed offsets or by content, repeats
 * another, and none compresses. Cheaper than randomBytes.
 */
export function distinctBytes(label: string, length: number): Buffer {
  const key = createHash('sha256').update(label).digest().subarray(0, 16);
  return createCipheriv('aes-128-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(length));
}

/**
 * `count` files of exactly 1 MiB, all distinct: one block each in a datasource with a 1 MiB
 * block size (a file no larger than the block size is never cut), which is what tests that
 * count blocks give theirs. Returns their total size.
 */
export async function writeDistinctFiles(dir: string, count: number, label: string): Promise<number> {
  await mkdir(dir, { recursive: true });
  const tag = `${label}:${randomBytes(8).toString('hex')}`;
  for (let i = 0; i < count; i++)
    await writeFile(path.join(dir, `f-${String(i).padStart(4, '0')}.bin`), distinctBytes(`${tag}:${i}`, MiB));
  return count * MiB;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A file of `mib` MiB of distinct bytes, written 16 MiB at a time. Returns its size. */
export async function writeDistinctBigFile(file: string, mib: number, label: string): Promise<number> {
  const tag = `${label}:${randomBytes(8).toString('hex')}`;
  const fh = await open(file, 'w');
  try {
    const group = 16;
    for (let at = 0; at < mib; at += group) {
      const n = Math.min(group, mib - at);
      await fh.write(distinctBytes(`${tag}:${at}`, n * MiB), 0, n * MiB, at * MiB);
    }
  } finally {
    await fh.close();
  }
  return mib * MiB;
}

/** Queues a server job or check (verify, gc, consistency-check) and waits for its end. */
export async function runJob(
  server: TestServer,
  body:
    | { type: 'verify'; rpIds?: string[] }
    | { type: 'gc'; graceMs?: number }
    | { type: 'consistency-check'; datasourceId: string },
  timeoutMs = 60_000,
): Promise<JobDetail> {
  const job = await server.api<{ id: string }>('POST', '/jobs', body);
  return waitJobEnd(server, job.id, timeoutMs);
}

export interface AlertView {
  kind: string;
  severity: string;
  subject: string;
  message: string;
  state: 'active' | 'resolved';
}

export function activeAlerts(server: TestServer): Promise<AlertView[]> {
  return server.api<AlertView[]>('GET', '/alerts');
}
