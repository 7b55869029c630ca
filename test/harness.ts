import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { requestJson } from '../lib/http-client.ts';
import { pinnedTlsOptions, type PinnedTls } from '../protocol/tls-pin.ts';

/*
 * Real processes for end-to-end tests: `holdfast server start` and `holdfast agent run` as
 * child processes on free loopback ports, each test with its own data folders and its own
 * database (a fresh PostgreSQL database when HOLDFAST_TEST_DATABASE_URL is set, else PGlite).
 */

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const BIN = path.join(ROOT, 'bin', 'holdfast.mjs');

export async function tempDir(label: string): Promise<string> {
  return mkdtemp(path.join(os.tmpdir(), `holdfast-${label}-`));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}

/** A database of its own for one test server; dropped by the returned cleanup. */
export async function testDatabase(): Promise<{ url?: string; drop(): Promise<void> }> {
  const base = process.env.HOLDFAST_TEST_DATABASE_URL;
  if (!base) return { url: undefined, drop: async () => {} };
  return postgresDatabase(base);
}

/**
 * A fresh PostgreSQL database even in a PGlite run, for what only a server database can show
 * (several server processes sharing one database).
 */
export async function sharedPostgresDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  return postgresDatabase(
    process.env.HOLDFAST_TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test',
  );
}

async function postgresDatabase(base: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `holdfast_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: base });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(base);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    async drop() {
      const c = new pg.Client({ connectionString: base });
      await c.connect();
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await c.end();
    },
  };
}

export interface Proc {
  child: ChildProcess;
  output(): string;
  exited: Promise<number | null>;
}

export function spawnHoldfast(
  args: string[],
  opts: { uid?: number; gid?: number; nodeArgs?: string[] } = {},
): Proc {
  const { nodeArgs = [], ...ids } = opts;
  const child = spawn(process.execPath, [...nodeArgs, BIN, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...ids,
  });
  let out = '';
  child.stdout!.on('data', (d) => {
    out += d;
  });
  child.stderr!.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, output: () => out, exited };
}

export async function stopProcess(p: Proc, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill(signal);
  const timer = setTimeout(() => p.child.kill('SIGKILL'), 10_000);
  await p.exited;
  clearTimeout(timer);
}

export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  timeoutMs = 30_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastErr = err;
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  throw new Error(`timed out waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ''}`);
}

export interface TestServer {
  url: string;
  dataDir: string;
  token: string;
  fingerprint?: string;
  tls?: PinnedTls;
  proc: Proc;
  api<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T>;
  /** Kill (SIGKILL by default) and start again on the same port, data and database. */
  restart(signal?: NodeJS.Signals): Promise<void>;
  stop(): Promise<void>;
}

export async function startServer(
  opts: {
    tls?: boolean;
    /** Appended to the `server start` arguments, e.g. ['--resume-window', '3s']. */
    extraArgs?: string[];
    /** Share this PostgreSQL database (several servers on one database); the caller drops it. */
    databaseUrl?: string;
    /** Share this data folder (several servers on one store). */
    dataDir?: string;
  } = {},
): Promise<TestServer> {
  const dataDir = opts.dataDir ?? (await tempDir('server'));
  const db = opts.databaseUrl ? { url: opts.databaseUrl, drop: async () => {} } : await testDatabase();
  const port = await freePort();
  const tls = opts.tls ?? false;
  const args = [
    'server',
    'start',
    '--data',
    dataDir,
    '--listen',
    `127.0.0.1:${port}`,
    '--no-local-agent',
    '--log-level',
    'warn',
  ];
  if (!tls) args.push('--no-tls');
  if (db.url) args.push('--database-url', db.url);
  args.push(...(opts.extraArgs ?? []));
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

  const server: TestServer = {
    url,
    dataDir,
    token: '',
    proc: undefined as unknown as Proc,
    api: (method, route, body) =>
      requestJson(`${url}/api/v1${route}`, { method, body, token: server.token, tls: server.tls }),
    async restart(signal = 'SIGKILL') {
      await stopProcess(server.proc, signal);
      server.proc = await launch();
    },
    async stop() {
      await stopProcess(server.proc);
      await db.drop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
  const launch = async () => {
    const proc = spawnHoldfast(args);
    try {
      await waitFor(
        `server on ${url}`,
        async () => {
          if (proc.child.exitCode !== null) throw new Error(`server exited: ${proc.output()}`);
          if (tls && !server.tls) {
            const cert = await readFile(path.join(dataDir, 'tls', 'cert.pem'), 'utf8');
            server.tls = pinnedTlsOptions(cert);
          }
          return requestJson(`${url}/api/v1/health`, { tls: server.tls, timeoutMs: 1000 });
        },
        90_000,
      );
    } catch (err) {
      // Leave nothing behind: a test that could not start its server still cleans up.
      await stopProcess(proc, 'SIGKILL');
      throw err;
    }
    return proc;
  };
  try {
    server.proc = await launch();
  } catch (err) {
    await db.drop().catch(() => {});
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  server.token = (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim();
  return server;
}

/** Runs the CLI and returns its exit code and output (stdout parsed as JSON when possible). */
export async function cli(
  args: string[],
  // biome-ignore lint/suspicious/noExplicitAny: each command prints its own JSON shape; tests assert on it
): Promise<{ code: number | null; stdout: string; stderr: string; json: any }> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  let json: unknown;
  try {
    json = JSON.parse(stdout);
  } catch {
    json = undefined;
  }
  return { code, stdout, stderr, json };
}

/** Admin flags that point the CLI at a test server. */
export const adminArgs = (s: TestServer) => ['--server', s.url, '--data', s.dataDir];

export interface TestAgent {
  name: string;
  stateDir: string;
  id: string;
  proc: Proc;
  stop(): Promise<void>;
}

/**
 * Enrolls an agent through the CLI without running it, optionally through another URL (a
 * proxy). Returns its state folder.
 */
export async function enrollAgent(
  server: TestServer,
  name: string,
  opts: { serverUrl?: string; stateDir?: string } = {},
): Promise<string> {
  const stateDir = opts.stateDir ?? (await tempDir(`agent-${name}`));
  const token = await cli(['enroll-token', 'create', ...adminArgs(server), '--json']);
  if (token.code !== 0) throw new Error(`enroll-token create failed: ${token.stderr}`);
  const enroll = await cli([
    'agent',
    'enroll',
    '--server',
    opts.serverUrl ?? server.url,
    '--token',
    token.json.token,
    '--state',
    stateDir,
    '--name',
    name,
    ...(token.json.fingerprint ? ['--fingerprint', token.json.fingerprint] : []),
  ]);
  if (enroll.code !== 0) throw new Error(`agent enroll failed: ${enroll.stderr}`);
  return stateDir;
}

/** Enrolls an agent through the CLI and runs it as its own process; waits until it is online. */
export async function startAgent(
  server: TestServer,
  name: string,
  opts: { uid?: number; gid?: number; stateDir?: string } = {},
): Promise<TestAgent> {
  const stateDir = await enrollAgent(server, name, { stateDir: opts.stateDir });
  if (opts.uid !== undefined) {
    const { chown } = await import('node:fs/promises');
    await chown(stateDir, opts.uid, opts.gid ?? opts.uid);
    await chown(path.join(stateDir, 'agent.json'), opts.uid, opts.gid ?? opts.uid);
  }
  const proc = spawnHoldfast(['agent', 'run', '--state', stateDir, '--log-level', 'warn'], {
    uid: opts.uid,
    gid: opts.gid,
  });
  const agents = await waitFor(`agent ${name} online`, async () => {
    const list = await server.api<{ name: string; id: string; online: boolean }[]>('GET', '/agents');
    return list.find((a) => a.name === name && a.online) ? list : undefined;
  });
  const id = agents.find((a) => a.name === name)!.id;
  return {
    name,
    stateDir,
    id,
    proc,
    async stop() {
      await stopProcess(proc);
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

export interface JobView {
  id: string;
  type: string;
  state: string;
  rpId: string | null;
  bytesScanned: number;
  bytesSent: number;
  bytesStored: number;
  files: number;
  warnings: string[];
  error: string | null;
}

export async function waitForJob(server: TestServer, id: string, timeoutMs = 60_000): Promise<JobView> {
  return waitFor(
    `job ${id}`,
    async () => {
      const job = await server.api<JobView>('GET', `/jobs/${id}`);
      return ['succeeded', 'failed', 'cancelled'].includes(job.state) ? job : undefined;
    },
    timeoutMs,
  );
}
