import { randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDatasource, backup, MiB } from './e2e-helpers.ts';
import {
  sharedPostgresDatabase,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
  waitFor,
} from './harness.ts';

/*
 * Two server processes share one PostgreSQL database and one data folder, as a
 * high-availability pair: the job queue's row leases must give every due job to exactly one
 * of them. The jobs do real work (each verifies a recovery point, re-reading its blocks from
 * the shared store), so that both processes are busy at once.
 */
describe('two server processes on one PostgreSQL', () => {
  let database: Awaited<ReturnType<typeof sharedPostgresDatabase>>;
  let servers: TestServer[] = [];
  let agent: TestAgent;
  let client: pg.Client;
  let work: string;
  let rpId: string;

  beforeAll(async () => {
    database = await sharedPostgresDatabase();
    work = await tempDir('two-servers');
    const dataDir = path.join(work, 'data');
    const args = (id: string) => ['--log-level', 'info', '--max-jobs', '3', '--server-id', id];
    // One after the other: the first applies the migrations and writes the admin token.
    servers.push(await startServer({ databaseUrl: database.url, dataDir, extraArgs: args('east') }));
    servers.push(await startServer({ databaseUrl: database.url, dataDir, extraArgs: args('west') }));
    client = new pg.Client({ connectionString: database.url });
    await client.connect();

    agent = await startAgent(servers[0]!, 'alpha');
    const src = path.join(work, 'src');
    await mkdir(src);
    for (let i = 0; i < 8; i++) await writeFile(path.join(src, `f${i}.bin`), randomBytes(MiB));
    // One block per file.
    const ds = await addDatasource(servers[0]!, { agent: 'alpha', path: src, blockSize: MiB });
    const job = await backup(servers[0]!, ds);
    expect(job.state, job.error ?? '').toBe('succeeded');
    rpId = job.rpId!;
  }, 180_000);

  afterAll(async () => {
    await agent?.stop();
    await client?.end();
    for (const s of servers) await s.stop();
    servers = [];
    await database?.drop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('run a burst of 200 due jobs, each exactly once', async () => {
    // Due in two seconds, so that both processes are polling when the burst becomes due.
    await client.query(
      `insert into jobs (id, type, agent_id, params, trigger, run_after)
       select gen_random_uuid()::text, 'verify', null, $1::jsonb, 'system', now() + interval '2 seconds'
       from generate_series(1, 200)`,
      [JSON.stringify({ rpIds: [rpId] })],
    );

    await waitFor(
      'all 200 jobs to finish',
      async () => {
        const { rows } = await client.query(
          `select count(*)::int as n from jobs where type = 'verify' and state in ('queued', 'running')`,
        );
        return rows[0].n === 0 || undefined;
      },
      150_000,
    );

    const { rows } = await client.query<{
      id: string;
      state: string;
      attempts: number;
      lease_owner: string;
      result: { rpsChecked: number; blocksChecked: number; corruptBlocks: unknown[] };
    }>(`select id, state, attempts, lease_owner, result from jobs where type = 'verify'`);
    expect(rows).toHaveLength(200);
    expect(rows.filter((r) => r.state !== 'succeeded')).toEqual([]);
    expect(rows.filter((r) => r.attempts !== 1)).toEqual([]);
    // Real work: every job read the point's 8 blocks from the shared store and found them whole.
    expect(
      rows.filter(
        (r) => r.result.rpsChecked !== 1 || r.result.blocksChecked !== 8 || r.result.corruptBlocks.length,
      ),
    ).toEqual([]);

    // Each process logs every job it starts: together, each job exactly once.
    const started = servers.map((s) => startedJobIds(s.proc.output()));
    const all = started.flat();
    expect(all).toHaveLength(200);
    expect(new Set(all)).toEqual(new Set(rows.map((r) => r.id)));
    // Both took part, and each row names the process that ran it.
    const byOwner = new Map<string, number>();
    for (const r of rows) byOwner.set(r.lease_owner, (byOwner.get(r.lease_owner) ?? 0) + 1);
    expect([...byOwner.keys()].sort()).toEqual(['east', 'west']);
    expect(byOwner.get('east')).toBe(started[0]!.length);
    expect(byOwner.get('west')).toBe(started[1]!.length);
  }, 180_000);
});

function startedJobIds(output: string): string[] {
  const ids: string[] = [];
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { msg?: string; jobId?: string; type?: string };
    if (entry.msg === 'job started' && entry.jobId && entry.type === 'verify') ids.push(entry.jobId);
  }
  return ids;
}
