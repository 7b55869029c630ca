import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sharedPostgresDatabase, startServer, type TestServer, waitFor } from './harness.ts';

/*
 * Two server processes share one PostgreSQL database, as in a high-availability pair: the
 * job queue's row leases must give every due job to exactly one of them.
 */
describe('two server processes on one PostgreSQL', () => {
  let database: Awaited<ReturnType<typeof sharedPostgresDatabase>>;
  let servers: TestServer[] = [];
  let client: pg.Client;

  beforeAll(async () => {
    database = await sharedPostgresDatabase();
    const args = ['--log-level', 'info', '--max-jobs', '3'];
    // One after the other: the first applies the migrations.
    servers.push(await startServer({ databaseUrl: database.url, extraArgs: args }));
    servers.push(await startServer({ databaseUrl: database.url, extraArgs: args }));
    client = new pg.Client({ connectionString: database.url });
    await client.connect();
  }, 180_000);

  afterAll(async () => {
    await client?.end();
    await Promise.all(servers.map((s) => s.stop()));
    servers = [];
    await database?.drop();
  });

  it('run a burst of 200 due jobs, each exactly once', async () => {
    // Due in two seconds, so that both processes are polling when the burst becomes due.
    await client.query(`
      insert into jobs (id, type, agent_id, params, trigger, run_after)
      select gen_random_uuid()::text, 'verify', null, '{"rpIds": []}'::jsonb, 'system', now() + interval '2 seconds'
      from generate_series(1, 200)`);

    await waitFor(
      'all 200 jobs to finish',
      async () => {
        const { rows } = await client.query(
          `select count(*)::int as n from jobs where state in ('queued', 'running')`,
        );
        return rows[0].n === 0 || undefined;
      },
      120_000,
    );

    const { rows } = await client.query<{ id: string; state: string; attempts: number; lease_owner: string }>(
      'select id, state, attempts, lease_owner from jobs',
    );
    expect(rows).toHaveLength(200);
    expect(rows.filter((r) => r.state !== 'succeeded')).toEqual([]);
    expect(rows.filter((r) => r.attempts !== 1)).toEqual([]);

    // Each process logs every job it starts: together, each job exactly once.
    const started = servers.map((s) => startedJobIds(s.proc.output()));
    const all = started.flat();
    expect(all).toHaveLength(200);
    expect(new Set(all).size).toBe(200);
    expect(new Set(all)).toEqual(new Set(rows.map((r) => r.id)));
    // Both took part: the leases, not luck, kept them apart.
    expect(started[0]!.length).toBeGreaterThan(0);
    expect(started[1]!.length).toBeGreaterThan(0);
    expect(new Set(rows.map((r) => r.lease_owner)).size).toBe(2);
  }, 180_000);
});

function startedJobIds(output: string): string[] {
  const ids: string[] = [];
  for (const line of output.split('\n')) {
    if (!line.startsWith('{')) continue;
    const entry = JSON.parse(line) as { msg?: string; jobId?: string };
    if (entry.msg === 'job started' && entry.jobId) ids.push(entry.jobId);
  }
  return ids;
}
