import { eq } from 'drizzle-orm';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { datasources, jobs, protectionGroups } from '../db/schema.ts';
import { createJob } from '../jobs/job-repo.ts';
import { listDatasources } from '../datasources/datasources.ts';
import { AppError } from '../errors.ts';
import {
  createGroup,
  deleteGroup,
  listGroups,
  mergePolicy,
  showGroup,
  updateGroup,
} from './group-service.ts';
import { DAY, type GroupsFixture, openGroupsFixture, T0 } from './groups.test-helpers.ts';
import { parsePolicy } from './policy.ts';

let f: GroupsFixture;
beforeAll(async () => {
  f = await openGroupsFixture();
  await f.agent('alpha');
  await f.agent('beta');
});
beforeEach(async () => f.reset());
afterAll(async () => f?.close());

const disk = { retentionDays: 10, recoveryPoints: { days: ['mon', 'fri'], times: ['20:00'] } };
const failure = (p: Promise<unknown>) =>
  p.then(
    () => {
      throw new Error('expected a refusal');
    },
    (e: unknown) => {
      expect(e).toBeInstanceOf(AppError);
      return e as AppError;
    },
  );

describe('group service', () => {
  it('creates a group, creating datasources that do not exist yet', async () => {
    const existing = await f.datasource('alpha', '/srv/a');
    const r = await createGroup(
      f,
      {
        name: 'one',
        members: [
          { agent: 'alpha', path: '/srv/a' },
          { agent: 'beta', path: '/var/img', kind: 'image' },
        ],
        disk,
      },
      T0,
    );
    expect(Object.keys(r.group)).toEqual(['name', 'members', 'disk', 'online']);
    expect(r.group.members).toEqual([
      { agent: 'alpha', path: '/srv/a', kind: 'files', datasourceId: existing },
      { agent: 'beta', path: '/var/img', kind: 'image', datasourceId: expect.any(String) },
    ]);
    expect(r.changes.map((c) => c.type)).toEqual([
      'group-created',
      'member-added',
      'datasource-created',
      'member-added',
    ]);
    expect(await listGroups(f.db)).toEqual([r.group]);
  });

  it('refuses a second group of the same name, a member of another group, and bad fields', async () => {
    await createGroup(f, { name: 'one', members: [{ agent: 'alpha', path: '/srv/a' }], disk }, T0);
    const dup = await failure(createGroup(f, { name: 'one', disk }, T0));
    expect(dup.code).toBe('CONFLICT');
    expect(dup.message).toBe('name: group "one" already exists; nothing was changed');

    const taken = await failure(
      createGroup(f, { name: 'two', members: [{ agent: 'alpha', path: '/srv/a/' }], disk }, T0),
    );
    expect(taken.code).toBe('CONFLICT');
    expect(taken.message).toBe(
      'members[0]: alpha:/srv/a is already in group "one"; remove it from that group first; nothing was changed',
    );

    const bad = await failure(
      createGroup(
        f,
        { name: 'bad name!', members: [{ agent: 'nobody', path: '/x' }], disk: { retentionDays: 0 } },
        T0,
      ),
    );
    expect(bad.code).toBe('INVALID_INPUT');
    expect(bad.message).toContain('name: must be 1 to 63 letters, digits');
    expect(bad.message).toContain('disk.retentionDays: must be a whole number of days from 1 to 448, got 0');
    expect(bad.message).toContain('disk.recoveryPoints: is required');
    expect(bad.message).toContain('members[0].agent: no agent named "nobody" is enrolled');
    expect((await listGroups(f.db)).map((g) => g.name)).toEqual(['one']);
    expect((await listDatasources(f.db)).map((d) => d.path)).toEqual(['/srv/a']);
  });

  it('updates some fields, merging nested maps and replacing switched variants', async () => {
    await createGroup(
      f,
      {
        name: 'one',
        disk: { ...disk, consistencyCheck: { when: 'daily', start: '22:00', maxHours: 4 } },
        online: { enabled: true, schedule: { daily: ['21:00'] }, retention: { daily: 30 } },
      },
      T0,
    );
    const r = await updateGroup(
      f,
      'one',
      {
        disk: { recoveryPoints: { times: ['09:00', '08:00'] }, consistencyCheck: { when: 'needed' } },
        online: { schedule: { weekly: { days: ['sat'], times: ['21:00'] } }, retention: { weekly: 4 } },
      },
      T0,
    );
    expect(r.group.disk.recoveryPoints).toEqual({ days: ['mon', 'fri'], times: ['08:00', '09:00'] });
    expect(r.group.disk.consistencyCheck).toEqual({ when: 'needed' });
    expect(r.group.online).toEqual({
      enabled: true,
      schedule: { weekly: { days: ['sat'], times: ['21:00'] } },
      retention: { daily: 30, weekly: 4, monthly: 0, yearly: 0 },
    });
    expect(r.changes.filter((c) => c.type === 'policy-changed').map((c) => 'field' in c && c.field)).toEqual([
      'disk.recoveryPoints.times',
      'disk.consistencyCheck.when',
      'disk.consistencyCheck.start',
      'disk.consistencyCheck.maxHours',
      'online.schedule.daily',
      'online.schedule.weekly',
      'online.retention.weekly',
    ]);
    expect((await updateGroup(f, 'one', { disk: { retentionDays: 10 } }, T0)).changes).toEqual([]);
    const bad = await failure(updateGroup(f, 'one', { disk: { syncEvery: '2d' }, colour: 'red' }, T0));
    expect(bad.message).toContain('unknown field "colour"');
    const bad2 = await failure(updateGroup(f, 'one', { disk: { syncEvery: '2d' } }, T0));
    expect(bad2.message).toBe(
      'disk.syncEvery: must be a duration like 15m, 1h or 2h30m, or "rp-only", got "2d"; nothing was changed',
    );
    expect((await failure(updateGroup(f, 'none', {}, T0))).code).toBe('NOT_FOUND');
  });

  it('adds and removes members; a removed member keeps its points', async () => {
    await createGroup(f, { name: 'one', members: [{ agent: 'alpha', path: '/srv/a' }], disk }, T0);
    const a = (await showGroup(f.db, 'one')).members[0]!.datasourceId;
    const point = await f.point(a, T0);
    const r = await updateGroup(
      f,
      'one',
      {
        addMembers: [{ agent: 'beta', path: '/srv/b' }],
        removeMembers: [{ agent: 'alpha', path: '/srv/a' }],
      },
      T0,
    );
    expect(r.group.members.map((m) => `${m.agent}:${m.path}`)).toEqual(['beta:/srv/b']);
    expect(await f.pointIds(a)).toEqual([point]);
    const missing = await failure(
      updateGroup(f, 'one', { removeMembers: [{ agent: 'alpha', path: '/srv/a' }] }, T0),
    );
    expect(missing.code).toBe('NOT_FOUND');
    expect(missing.message).toBe(
      'removeMembers[0]: alpha:/srv/a is not a member of group "one"; nothing was changed',
    );
  });

  it('cancels the queued scheduled jobs of members that leave, and of a deleted group', async () => {
    await createGroup(
      f,
      {
        name: 'one',
        members: [
          { agent: 'alpha', path: '/srv/a' },
          { agent: 'beta', path: '/srv/b' },
        ],
        disk,
      },
      T0,
    );
    const group = await showGroup(f.db, 'one');
    const [row] = await f.db.select().from(protectionGroups).where(eq(protectionGroups.name, 'one'));
    const [a, b] = group.members.map((m) => m.datasourceId);
    const scheduled = async (datasourceId: string, trigger: 'schedule' | 'manual' = 'schedule') => {
      const [ds] = await f.db.select().from(datasources).where(eq(datasources.id, datasourceId));
      return (
        await createJob(f.db, {
          type: 'backup',
          agentId: ds!.agentId,
          datasourceId,
          groupId: row!.id,
          trigger,
          params: { full: false, origin: 'sync' },
        })
      ).id;
    };
    const stateOf = async (id: string) => (await f.db.select().from(jobs).where(eq(jobs.id, id)))[0]!.state;
    const ofA = await scheduled(a!);
    const ofB = await scheduled(b!);
    const manualOfA = await scheduled(a!, 'manual');

    await updateGroup(f, 'one', { removeMembers: [{ agent: 'alpha', path: '/srv/a' }] }, T0);
    expect(await stateOf(ofA)).toBe('cancelled');
    expect(await stateOf(ofB)).toBe('queued');
    expect(await stateOf(manualOfA)).toBe('queued'); // asked for by an administrator: it stays

    await deleteGroup(f, 'one', { keepData: true });
    expect(await stateOf(ofB)).toBe('cancelled');
  });

  it('prunes at once what a shorter retention no longer keeps', async () => {
    await createGroup(f, { name: 'one', members: [{ agent: 'alpha', path: '/srv/a' }], disk }, T0);
    const a = (await showGroup(f.db, 'one')).members[0]!.datasourceId;
    const old = await f.point(a, new Date(T0.getTime() - 5 * DAY));
    const recent = await f.point(a, new Date(T0.getTime() - DAY));
    const r = await updateGroup(f, 'one', { disk: { retentionDays: 2 } }, T0);
    expect(r.changes.at(-1)).toMatchObject({ type: 'recovery-point-pruned', rpId: old });
    expect(await f.pointIds(a)).toEqual([recent]);
    expect(await f.manifests.exists(old)).toBe(false);
  });

  it('deletes a group keeping its data, or with all disk points of its members', async () => {
    const other = await f.datasource('beta', '/srv/other');
    const otherPoint = await f.point(other, T0);
    await createGroup(f, { name: 'keep', members: [{ agent: 'alpha', path: '/srv/k' }], disk }, T0);
    await createGroup(f, { name: 'drop', members: [{ agent: 'alpha', path: '/srv/d' }], disk }, T0);
    const k = (await showGroup(f.db, 'keep')).members[0]!.datasourceId;
    const d = (await showGroup(f.db, 'drop')).members[0]!.datasourceId;
    const kp = [await f.point(k, new Date(T0.getTime() - DAY)), await f.point(k, T0)];
    const dp = [await f.point(d, new Date(T0.getTime() - DAY)), await f.point(d, T0)];
    const vault = await f.point(d, T0, { tier: 'vault' });

    const kept = await deleteGroup(f, 'keep', { keepData: true });
    expect(kept).toMatchObject({ name: 'keep', keptData: true, deletedRecoveryPoints: [] });
    expect(kept.members.map((m) => m.datasourceId)).toEqual([k]);
    expect(await f.pointIds(k)).toEqual(kp);

    const dropped = await deleteGroup(f, 'drop', { keepData: false });
    expect(dropped.deletedRecoveryPoints.map((p) => p.rpId)).toEqual(dp);
    expect(await f.pointIds(d)).toEqual([vault]);
    for (const id of dp) expect(await f.manifests.exists(id)).toBe(false);
    expect(await f.pointIds(other)).toEqual([otherPoint]);
    expect(await listGroups(f.db)).toEqual([]);
    // The datasources stay, in no group: a new group may take them.
    expect((await listDatasources(f.db)).length).toBe(3);
    await createGroup(f, { name: 'again', members: [{ agent: 'alpha', path: '/srv/d' }], disk }, T0);
    expect((await failure(deleteGroup(f, 'drop', { keepData: true }))).code).toBe('NOT_FOUND');
  });
});

describe('mergePolicy', () => {
  const current = parsePolicy({
    disk: { ...disk, expressFull: { days: ['sun'], times: ['03:00'] } },
    online: { enabled: true, schedule: { daily: ['21:00'] }, retention: { daily: 7 } },
  });
  it('replaces lists, merges maps, and takes null to clear', () => {
    expect(
      mergePolicy(current, { disk: { expressFull: null, recoveryPoints: { days: ['tue'] } } }),
    ).toMatchObject({
      disk: { expressFull: null, recoveryPoints: { days: ['tue'], times: ['20:00'] } },
    });
    expect(mergePolicy(current, {})).toEqual(current);
  });
});
