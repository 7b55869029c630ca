import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  adminArgs,
  cli,
  enrollAgent,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
  waitForJob,
} from './harness.ts';

/*
 * Protection groups through the real server process and the CLI: `holdfast apply` of a YAML
 * file (idempotent, all-or-nothing), `export` round trip, `group show --json`, and `group
 * delete` with and without --keep-data on recovery points made by a real agent.
 */
describe('protection groups through real processes', () => {
  let server: TestServer;
  let alpha: TestAgent;
  let work: string;
  /** State folder of "beta", enrolled and never run. */
  let betaState: string;
  let file: string;
  let src1: string;
  let src2: string;

  const hf = (...args: string[]) => cli([...args, ...adminArgs(server)]);
  const hfJson = (...args: string[]) => cli([...args, ...adminArgs(server), '--json']);
  const exported = async () => (await server.api<{ yaml: string }>('GET', '/config/export')).yaml;

  // Times 12 hours away, so that the scheduler never starts a backup of these groups mid-test.
  const later = new Date(Date.now() + 12 * 3600_000);
  const far = `${String(later.getHours()).padStart(2, '0')}:${String(later.getMinutes()).padStart(2, '0')}`;

  const groupsFile = () => `
groups:
  - name: file-servers
    members:
      - { agent: alpha, path: ${src1}, kind: files }   # created: not a datasource yet
      - { agent: beta, path: /srv/www }
    disk:
      retentionDays: 14
      syncEvery: rp-only
      recoveryPoints: { days: [mon, tue, wed, thu, fri], times: ["${far}"] }
      consistencyCheck: { when: daily, start: "${far}", maxHours: 4 }
    online:
      enabled: true
      schedule: { weekly: { days: [sat], times: ["${far}"] } }
      retention: { daily: 30, weekly: 12, monthly: 12, yearly: 10 }
  - name: scratch
    members:
      - { agent: alpha, path: ${src2} }
    disk:
      retentionDays: 3
      syncEvery: rp-only
      recoveryPoints: { days: [sun], times: ["${far}"] }
`;

  beforeAll(async () => {
    server = await startServer();
    [alpha, betaState] = await Promise.all([startAgent(server, 'alpha'), enrollAgent(server, 'beta')]);
    work = await tempDir('groups-e2e');
    src1 = path.join(work, 'data');
    src2 = path.join(work, 'scratch');
    for (const dir of [src1, src2]) {
      await mkdir(dir, { recursive: true });
      await writeFile(path.join(dir, 'a.txt'), `hello from ${dir}\n`);
    }
    file = path.join(work, 'groups.yaml');
    await writeFile(file, groupsFile());
  });

  afterAll(async () => {
    await alpha?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
    if (betaState) await rm(betaState, { recursive: true, force: true });
  });

  it('applies a file; applying it again changes nothing', async () => {
    const dry = await hf('apply', '-f', file, '--dry-run');
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('plan (dry run, nothing changed):');
    expect(dry.stdout).toContain('create group "file-servers"');
    expect(await server.api('GET', '/groups')).toEqual([]);

    const first = await hf('apply', '-f', file);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toContain('applied:');
    expect(first.stdout).toContain(`file-servers: create datasource alpha:${src1} (files)`);
    expect(first.stdout).toContain('create group "scratch"');

    const again = await hf('apply', '-f', file);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^no changes/);
    const yaml = await readFile(file, 'utf8');
    expect(await server.api('POST', '/config/apply', { yaml })).toMatchObject({
      changed: false,
      changes: [],
    });
  });

  it('shows a group with the keys of the file', async () => {
    const show = await hfJson('group', 'show', 'file-servers');
    expect(show.code, show.stderr).toBe(0);
    const g = show.json;
    expect(Object.keys(g)).toEqual(['name', 'members', 'disk', 'online']);
    expect(g.members).toHaveLength(2);
    for (const m of g.members) expect(Object.keys(m)).toEqual(['agent', 'path', 'kind', 'datasourceId']);
    expect(g.members[0]).toMatchObject({ agent: 'alpha', path: src1, kind: 'files' });
    expect(Object.keys(g.disk)).toEqual(
      expect.arrayContaining(['retentionDays', 'syncEvery', 'recoveryPoints', 'consistencyCheck']),
    );
    expect(g.disk).toMatchObject({ retentionDays: 14, syncEvery: 'rp-only' });
    expect(g.online).toEqual({
      enabled: true,
      schedule: { weekly: { days: ['sat'], times: [far] } },
      retention: { daily: 30, weekly: 12, monthly: 12, yearly: 10 },
    });
    const human = await hf('group', 'show', 'file-servers');
    expect(human.stdout).toContain('retentionDays: 14');
    expect(human.stdout).toContain(g.members[0].datasourceId);
  });

  it('exports all groups; applying the export changes nothing', async () => {
    const out = path.join(work, 'export.yaml');
    const exp = await hf('export', '-o', out);
    expect(exp.code, exp.stderr).toBe(0);
    const text = await readFile(out, 'utf8');
    expect(text).toContain('name: file-servers');
    expect(text).toContain('name: scratch');
    expect(await exported()).toBe(text);
    const r = await hf('apply', '-f', out);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^no changes/);
  });

  it('refuses an invalid file with a message naming the problem, applying nothing of it', async () => {
    const before = await exported();
    const syntax = path.join(work, 'syntax.yaml');
    await writeFile(syntax, 'groups:\n  - name: x\n    disk: { retentionDays: 5\n  - name: y\n');
    const s = await hf('apply', '-f', syntax);
    expect(s.code).toBe(1);
    expect(s.stderr).toContain(`${syntax}: `);
    expect(s.stderr).toMatch(/line \d+, column \d+: YAML syntax error/);

    const invalid = path.join(work, 'invalid.yaml');
    await writeFile(
      invalid,
      groupsFile()
        .replace('retentionDays: 3', 'retentionDays: 500')
        .replace(
          '  - name: scratch',
          `  - name: new-group\n    members: [{ agent: alpha, path: ${work}/new }]\n    disk: { retentionDays: 5, recoveryPoints: { days: [sun], times: ["${far}"] } }\n  - name: scratch`,
        )
        .replace('agent: beta', 'agent: gamma'),
    );
    const v = await hf('apply', '-f', invalid);
    expect(v.code).toBe(1);
    expect(v.stderr).toContain(
      'groups[2].disk.retentionDays: must be a whole number of days from 1 to 448, got 500',
    );
    expect(v.stderr).toContain('groups[0].members[1].agent: no agent named "gamma" is enrolled');
    expect(v.stderr).toContain('nothing was applied');
    expect(await exported()).toBe(before);
    const ds = await server.api<{ path: string }[]>('GET', '/datasources');
    expect(ds.map((d) => d.path)).not.toContain(`${work}/new`);
  });

  it('creates and updates a group from options', async () => {
    const c = await hfJson(
      'group',
      'create',
      'cli-made',
      '--member',
      `beta:/srv/cli:image`,
      '--retention-days',
      '5',
      '--rp-days',
      'sat,sun',
      '--rp-times',
      far,
      '--sync-every',
      'rp-only',
      '--online-daily',
      far,
      '--online-retention-daily',
      '7',
    );
    expect(c.code, c.stderr).toBe(0);
    expect(c.json.group).toMatchObject({
      name: 'cli-made',
      members: [{ agent: 'beta', path: '/srv/cli', kind: 'image' }],
      disk: { retentionDays: 5, recoveryPoints: { days: ['sun', 'sat'], times: [far] } },
      online: { enabled: true, schedule: { daily: [far] }, retention: { daily: 7 } },
    });
    const u = await hf(
      'group',
      'update',
      'cli-made',
      '--retention-days',
      '9',
      '--no-online',
      '--add-member',
      'beta:/srv/more',
    );
    expect(u.code, u.stderr).toBe(0);
    expect(u.stdout).toContain('cli-made: disk.retentionDays: 5 -> 9');
    expect(u.stdout).toContain('cli-made: add member beta:/srv/more (files)');
    const bad = await hf('group', 'update', 'cli-made', '--retention-days', '0');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('disk.retentionDays: must be a whole number of days from 1 to 448, got 0');
    const list = await hf('group', 'list');
    expect(list.stdout).toMatch(/cli-made\s+2\s+9\s+rp-only/);
    expect((await hf('group', 'delete', 'cli-made')).code).toBe(0);
  });

  it('deletes a group keeping its recovery points, or with them', async () => {
    const show = (name: string) =>
      server.api<{ members: { datasourceId: string }[] }>('GET', `/groups/${name}`);
    const dataDs = (await show('file-servers')).members[0]!.datasourceId;
    const scratchDs = (await show('scratch')).members[0]!.datasourceId;
    const rps = async (ds: string) =>
      (await server.api<{ id: string }[]>('GET', `/recovery-points?datasourceId=${ds}`)).map((r) => r.id);
    for (const ds of [dataDs, scratchDs]) {
      const job = await server.api<{ id: string }>('POST', '/backups', { datasourceId: ds });
      expect((await waitForJob(server, job.id)).state).toBe('succeeded');
    }
    const kept = await rps(dataDs);
    const doomed = await rps(scratchDs);
    expect(kept).toHaveLength(1);
    expect(doomed).toHaveLength(1);
    const manifest = (id: string) => path.join(server.dataDir, 'manifests', `${id}.manifest`);
    expect(existsSync(manifest(doomed[0]!))).toBe(true);

    const k = await hf('group', 'delete', 'file-servers', '--keep-data');
    expect(k.code, k.stderr).toBe(0);
    expect(k.stdout).toContain('their recovery points were kept');
    expect(await rps(dataDs)).toEqual(kept);
    expect(existsSync(manifest(kept[0]!))).toBe(true);

    const d = await hfJson('group', 'delete', 'scratch');
    expect(d.code, d.stderr).toBe(0);
    expect(d.json).toMatchObject({ name: 'scratch', keptData: false });
    expect(d.json.deletedRecoveryPoints.map((p: { rpId: string }) => p.rpId)).toEqual(doomed);
    expect(await rps(scratchDs)).toEqual([]);
    expect(existsSync(manifest(doomed[0]!))).toBe(false);

    expect(await server.api('GET', '/groups')).toEqual([]);
    const gone = await hf('group', 'show', 'scratch');
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('group "scratch" not found');
  });
});
