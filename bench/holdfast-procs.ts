import { readFile } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { requestJson } from '../lib/http-client.ts';
import { cli, freePort, type Proc, spawnHoldfast, stopProcess, waitFor } from '../test/harness.ts';

/*
 * A Holdfast deployment for the bench, as an operator would start it: `holdfast server start`
 * on a free loopback port (no TLS, PGlite in the data folder), then one agent enrolled through
 * the CLI (`enroll-token create` + `agent enroll`) and run as its own process (`agent run`).
 */

export interface Deployment {
  url: string;
  dataDir: string;
  token: string;
  server: Proc;
  agent: Proc;
  agentName: string;
  api<T>(method: 'GET' | 'POST', route: string, body?: unknown): Promise<T>;
  /** Throws if the server or the agent has exited (with its output). */
  checkAlive(): void;
  stop(): Promise<void>;
}

export async function startDeployment(
  toolDir: string,
  databaseUrl?: string,
  /** Write V8 CPU profiles of the server and the agent (main threads) here when they stop. */
  cpuProfDir?: string,
): Promise<Deployment> {
  const nodeArgs = cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [];
  const db = databaseUrl ? await freshDatabase(databaseUrl) : undefined;
  const dataDir = path.join(toolDir, 'data');
  const stateDir = path.join(toolDir, 'agent-state');
  const agentName = 'bench';
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const listen = `127.0.0.1:${port}`;
  const server = spawnHoldfast(
    [
      'server',
      'start',
      '--data',
      dataDir,
      '--listen',
      listen,
      '--no-local-agent',
      '--no-tls',
      '--log-level',
      'warn',
      ...(db ? ['--database-url', db.url] : []),
    ],
    { nodeArgs },
  );
  const procs: Proc[] = [server];
  const stop = async () => {
    await Promise.all(procs.reverse().map((p) => stopProcess(p)));
    await db?.drop();
  };
  try {
    await waitFor(
      `Holdfast server on ${url}`,
      async () => {
        if (server.child.exitCode !== null) throw new Error(`server exited: ${server.output()}`);
        return requestJson(`${url}/api/v1/health`, { timeoutMs: 1000 });
      },
      60_000,
    );
    const token = (await readFile(path.join(dataDir, 'admin-token'), 'utf8')).trim();
    const api = <T>(method: 'GET' | 'POST', route: string, body?: unknown) =>
      requestJson<T>(`${url}/api/v1${route}`, { method, body, token });

    const tok = await cli(['enroll-token', 'create', '--server', url, '--data', dataDir, '--json']);
    if (tok.code !== 0) throw new Error(`enroll-token create failed: ${tok.stderr}`);
    const enrollArgs = ['--server', url, '--token', tok.json.token, '--state', stateDir, '--name', agentName];
    const enroll = await cli(['agent', 'enroll', ...enrollArgs, '--json']);
    if (enroll.code !== 0) throw new Error(`agent enroll failed: ${enroll.stderr}`);
    const agent = spawnHoldfast(['agent', 'run', '--state', stateDir, '--log-level', 'warn'], { nodeArgs });
    procs.push(agent);
    await waitFor(`agent "${agentName}" online`, async () => {
      if (agent.child.exitCode !== null) throw new Error(`agent exited: ${agent.output()}`);
      const list = await api<{ name: string; online: boolean }[]>('GET', '/agents');
      return list.some((a) => a.name === agentName && a.online) || undefined;
    });
    const checkAlive = () => {
      for (const [label, p] of [
        ['server', server],
        ['agent', agent],
      ] as const) {
        if (p.child.exitCode !== null)
          throw new Error(`Holdfast ${label} exited (${p.child.exitCode}):\n${p.output()}`);
      }
    };
    return { url, dataDir, token, server, agent, agentName, api, checkAlive, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** A database of its own for one bench run, beside the one `base` names; dropped at the end. */
async function freshDatabase(base: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `holdfast_bench_${Date.now()}`;
  const run = async (sql: string) => {
    const client = new pg.Client({ connectionString: base });
    await client.connect();
    try {
      await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await run(`CREATE DATABASE ${name}`);
  const url = new URL(base);
  url.pathname = `/${name}`;
  return { url: url.toString(), drop: () => run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}
