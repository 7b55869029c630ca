import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { listDatasources } from '../datasources/datasources.ts';
import { AppError } from '../errors.ts';
import { applyConfig, exportConfig } from './apply.ts';
import { listGroups, showGroup } from './group-service.ts';
import { DAY, type GroupsFixture, openGroupsFixture, T0 } from './groups.test-helpers.ts';

/* `holdfast apply` on a real migrated database: plans, idempotency, all-or-nothing. */

let f: GroupsFixture;
beforeAll(async () => {
  f = await openGroupsFixture();
  await f.agent('alpha');
  await f.agent('beta');
});
beforeEach(async () => f.reset());
afterAll(async () => f?.close());

const FILE = `
groups:
  - name: file-servers
    members:
      - { agent: alpha, path: /srv/data, kind: files }     # adds the datasource if it does not exist
      - { agent: beta, path: /srv/www/ }
    disk:
      retentionDays: 14                                   # 1..448
      syncEvery: 15m                                      # 15m..24h, or "rp-only"
      recoveryPoints: { days: [mon, tue, wed, thu, fri], times: ["08:00", "12:00", "20:00"] }
      consistencyCheck: { when: needed }                  # or { when: daily, start: "22:00", maxHours: 4 }
    online:
      enabled: true
      schedule: { daily: ["21:00"] }                      # or { weekly: { days: [sat], times: ["21:00"] } }
      retention: { daily: 30, weekly: 12, monthly: 12, yearly: 10 }
  - name: images
    members:
      - { agent: beta, path: /dev/vg0/data, kind: image }
    disk:
      retentionDays: 7
      syncEvery: rp-only
      recoveryPoints: { days: [sat], times: ["01:00"] }
      expressFull: { days: [sun], times: ["03:00"] }
      consistencyCheck: { when: daily, start: "22:00", maxHours: 4 }
    online:
      enabled: true
      schedule: { weekly: { days: [sat], times: ["21:00"] } }
      retention: { weekly: 12 }
`;

async function applyError(yaml: string): Promise<AppError> {
  const err = await applyConfig(f, yaml, { now: T0 }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AppError);
  return err as AppError;
}

describe('apply', () => {
  it('creates groups, datasources and members; a second apply changes nothing', async () => {
    const first = await applyConfig(f, FILE, { now: T0 });
    expect(first.changed).toBe(true);
    expect(first.changes.map((c) => `${c.type} ${c.group}`)).toEqual([
      'group-created file-servers',
      'datasource-created file-servers',
      'member-added file-servers',
      'datasource-created file-servers',
      'member-added file-servers',
      'group-created images',
      'datasource-created images',
      'member-added images',
    ]);
    const g = await showGroup(f.db, 'file-servers');
    expect(g.members.map((m) => `${m.agent}:${m.path}:${m.kind}`)).toEqual([
      'alpha:/srv/data:files',
      'beta:/srv/www:files',
    ]);
    expect(g.disk).toEqual({
      retentionDays: 14,
      syncEvery: '15m',
      recoveryPoints: { days: ['mon', 'tue', 'wed', 'thu', 'fri'], times: ['08:00', '12:00', '20:00'] },
      expressFull: null,
      consistencyCheck: { when: 'needed' },
    });
    expect(g.online).toEqual({
      enabled: true,
      schedule: { daily: ['21:00'] },
      retention: { daily: 30, weekly: 12, monthly: 12, yearly: 10 },
    });
    expect((await listDatasources(f.db)).length).toBe(3);

    const second = await applyConfig(f, FILE, { now: T0 });
    expect(second).toMatchObject({ changed: false, changes: [], untouched: [] });
  });

  it('--dry-run plans and changes nothing', async () => {
    const plan = await applyConfig(f, FILE, { dryRun: true, now: T0 });
    expect(plan.dryRun).toBe(true);
    expect(plan.changes.filter((c) => c.type === 'group-created')).toHaveLength(2);
    expect(await listGroups(f.db)).toEqual([]);
    expect(await listDatasources(f.db)).toEqual([]);
  });

  it('reports every problem at once, each with its path and line, and applies nothing', async () => {
    await applyConfig(
      f,
      'groups:\n  - name: other\n    members: [{ agent: alpha, path: /srv/taken }]\n' +
        '    disk: { retentionDays: 5, recoveryPoints: { days: [mon], times: ["01:00"] } }\n',
      { now: T0 },
    );
    const before = await exportConfig(f.db);
    const bad = `groups:
  - name: good
    members: [{ agent: alpha, path: /srv/new }]
    disk: { retentionDays: 5, recoveryPoints: { days: [mon], times: ["01:00"] } }
  - name: bad
    members:
      - { agent: gamma, path: /srv/x }
      - { agent: alpha, path: /srv/new }
      - { agent: alpha, path: /srv/taken }
      - { agent: beta, path: relative }
    disk:
      retentionDays: 500
      syncEvery: 5m
      recoveryPoints: { days: [mon, funday], times: ["25:00"] }
    colour: blue
  - name: good
    disk: { retentionDays: 5, recoveryPoints: { days: [mon], times: ["01:00"] } }
`;
    const err = await applyError(bad);
    expect(err.code).toBe('INVALID_INPUT');
    const m = err.message;
    expect(m).toMatch(/^\d+ problems, nothing was applied:/);
    for (const expected of [
      'groups[1].disk.retentionDays: must be a whole number of days from 1 to 448, got 500 (line 12)',
      'groups[1].disk.syncEvery: must be from 15m to 24h, or "rp-only", got "5m" (line 13)',
      'groups[1].disk.recoveryPoints.days[1]: must be one of sun, mon, tue, wed, thu, fri, sat, got "funday"',
      'groups[1].disk.recoveryPoints.times[0]: must be a time of day "HH:MM" (00:00 to 23:59), got "25:00"',
      'groups[1]: unknown field "colour"',
      `groups[1].members[3].path: must be an absolute path on the agent's machine, got "relative"`,
      'groups[1].members[0].agent: no agent named "gamma" is enrolled (line 7)',
      'groups[1].members[1]: alpha:/srv/new is also a member of group "good" (groups[0].members[0]); a datasource belongs to at most one group',
      'groups[1].members[2]: alpha:/srv/taken is already in group "other"; remove it from that group first',
      'groups[2].name: group "good" is already defined at groups[0]',
    ])
      expect(m).toContain(expected);
    // Nothing half-applied: no group, no datasource, the other group as it was.
    expect(await exportConfig(f.db)).toBe(before);
    expect((await listDatasources(f.db)).map((d) => d.path)).toEqual(['/srv/taken']);
  });

  it('names line and column of a YAML syntax error', async () => {
    const err = await applyError('groups:\n  - name: a\n    disk: { retentionDays: 5\n  - name: b\n');
    expect(err.code).toBe('INVALID_INPUT');
    expect(err.message).toMatch(/line \d+, column \d+: YAML syntax error: /);
    expect(err.message).toContain('nothing was applied');
    expect((await applyError('groups: [\n')).message).toMatch(/line \d+, column \d+/);
    expect((await applyError('')).message).toContain('the file is empty');
    expect((await applyError('- name: a\n')).message).toContain('"groups:" at the top');
    expect((await applyError('groups:\n  - x\n')).message).toContain('groups[0]: must be a group');
  });

  it('lists policy changes, member moves and the points a shorter retention prunes', async () => {
    await applyConfig(f, FILE, { now: T0 });
    const data = (await showGroup(f.db, 'file-servers')).members[0]!.datasourceId;
    const www = (await showGroup(f.db, 'file-servers')).members[1]!.datasourceId;
    const ids: string[] = [];
    for (let d = 10; d >= 0; d--) ids.push(await f.point(data, new Date(T0.getTime() - d * DAY - 3600_000)));
    const wwwPoint = await f.point(www, new Date(T0.getTime() - 10 * DAY));

    // www moves to the images group; file-servers keeps 3 days instead of 14.
    const next = FILE.replace('retentionDays: 14', 'retentionDays: 3')
      .replace('      - { agent: beta, path: /srv/www/ }\n', '')
      .replace(
        '      - { agent: beta, path: /dev/vg0/data, kind: image }\n',
        '      - { agent: beta, path: /dev/vg0/data, kind: image }\n      - { agent: beta, path: /srv/www }\n',
      );
    const plan = await applyConfig(f, next, { dryRun: true, now: T0 });
    const pruned = ids.slice(0, 8); // older than 3 days
    expect(plan.changes).toEqual([
      { type: 'policy-changed', group: 'file-servers', field: 'disk.retentionDays', from: 14, to: 3 },
      {
        type: 'member-removed',
        group: 'file-servers',
        agent: 'beta',
        path: '/srv/www',
        kind: 'files',
        datasourceId: www,
      },
      ...pruned.map((rpId, i) => ({
        type: 'recovery-point-pruned',
        group: 'file-servers',
        agent: 'alpha',
        path: '/srv/data',
        datasourceId: data,
        rpId,
        createdAt: new Date(T0.getTime() - (10 - i) * DAY - 3600_000).toISOString(),
      })),
      {
        type: 'member-added',
        group: 'images',
        agent: 'beta',
        path: '/srv/www',
        kind: 'files',
        datasourceId: www,
      },
      // www's 10-day-old point: older than the 7 days of images, but its newest good point.
    ]);
    expect(await f.pointIds(data)).toEqual(ids);

    const done = await applyConfig(f, next, { now: T0 });
    expect(done.changes).toEqual(plan.changes);
    expect(await f.pointIds(data)).toEqual(ids.slice(8));
    for (const id of pruned) expect(await f.manifests.exists(id)).toBe(false);
    expect(await f.pointIds(www)).toEqual([wwwPoint]);
    expect((await showGroup(f.db, 'images')).members.map((m) => m.path)).toEqual([
      '/dev/vg0/data',
      '/srv/www',
    ]);
    expect((await applyConfig(f, next, { now: T0 })).changed).toBe(false);
  });

  it('leaves groups the file does not list alone', async () => {
    await applyConfig(f, FILE, { now: T0 });
    const onlyImages = `groups:\n${FILE.split('  - name: images')[1]!.replace(/^/, '  - name: images')}`;
    const r = await applyConfig(f, onlyImages, { now: T0 });
    expect(r).toMatchObject({ changed: false, untouched: ['file-servers'] });
    expect((await showGroup(f.db, 'file-servers')).members).toHaveLength(2);
    expect((await applyConfig(f, 'groups: []\n', { now: T0 })).untouched).toEqual(['file-servers', 'images']);
  });

  it('refuses a member whose datasource has another kind', async () => {
    await f.datasource('alpha', '/srv/disk.img', 'image');
    const err = await applyError(
      'groups:\n  - name: g\n    members: [{ agent: alpha, path: /srv/disk.img }]\n' +
        '    disk: { retentionDays: 5, recoveryPoints: { days: [mon], times: ["01:00"] } }\n',
    );
    expect(err.code).toBe('CONFLICT');
    expect(err.message).toContain(
      'groups[0].members[0].kind: datasource alpha:/srv/disk.img exists with kind image, not files',
    );
  });

  it('exports every group in the file format; applying the export changes nothing', async () => {
    await applyConfig(f, FILE, { now: T0 });
    const exported = await exportConfig(f.db);
    expect(exported).toContain(
      'recoveryPoints: { days: [ mon, tue, wed, thu, fri ], times: [ "08:00", "12:00", "20:00" ] }',
    );
    expect(exported).toContain('- { agent: alpha, path: /srv/data, kind: files }');
    expect(exported).not.toContain('expressFull: null');
    const r = await applyConfig(f, exported, { now: T0 });
    expect(r).toMatchObject({ changed: false, changes: [] });
    expect(await exportConfig(f.db)).toBe(exported);
  });
});
