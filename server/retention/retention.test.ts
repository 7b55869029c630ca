import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eq } from 'drizzle-orm';
import { protectionGroups } from '../db/schema.ts';
import { createGroup } from '../groups/group-service.ts';
import { DAY, type GroupsFixture, openGroupsFixture, T0 } from '../groups/groups.test-helpers.ts';
import { applyRetention, type PrunablePoint, planPrune } from './retention.ts';

const at = (days: number, hours = 0) => new Date(T0.getTime() + days * DAY + hours * 3600_000);
const p = (
  id: string,
  days: number,
  origin: PrunablePoint['origin'] = 'recovery-point',
  status: 'ok' | 'corrupt' = 'ok',
) => ({ id, createdAt: at(days), origin, status }) satisfies PrunablePoint;

describe('planPrune', () => {
  it('prunes points older than retentionDays, keeping the boundary', () => {
    const points = [p('a', -10), p('b', -7), p('c', -5.9), p('d', 0)];
    expect(planPrune({ retentionDays: 7 }, points, T0).sort()).toEqual(['a']);
    expect(planPrune({ retentionDays: 6 }, points, T0).sort()).toEqual(['a', 'b']);
    expect(planPrune({ retentionDays: 448 }, points, T0)).toEqual([]);
  });

  it('prunes a sync point once a newer successful point exists, never the newest', () => {
    const points = [
      p('rp1', -3),
      p('s1', -2.5, 'sync'),
      p('s2', -2, 'sync'),
      p('rp2', -1),
      p('s3', -0.5, 'sync'),
    ];
    expect(planPrune({ retentionDays: 14 }, points, T0).sort()).toEqual(['s1', 's2']);
  });

  it('keeps a sync point whose only newer points are corrupt', () => {
    const points = [p('s1', -2, 'sync'), p('bad', -1, 'recovery-point', 'corrupt')];
    expect(planPrune({ retentionDays: 14 }, points, T0)).toEqual([]);
  });

  it('keeps manual, express-full and consistency-check points for the whole range', () => {
    const points = [
      p('m', -5, 'manual'),
      p('e', -4, 'express-full'),
      p('c', -3, 'consistency-check'),
      p('s', -1, 'sync'),
    ];
    expect(planPrune({ retentionDays: 14 }, points, T0)).toEqual([]);
    expect(planPrune({ retentionDays: 4 }, points, T0).sort()).toEqual(['m']);
  });

  it('never prunes the newest ok point, however old, even behind corrupt ones', () => {
    const points = [p('old', -100), p('last-good', -60, 'sync'), p('bad', -50, 'recovery-point', 'corrupt')];
    expect(planPrune({ retentionDays: 7 }, points, T0).sort()).toEqual(['bad', 'old']);
  });

  it('answers the same whatever the input order', () => {
    const points = [p('x', -3, 'sync'), p('y', -2, 'sync'), p('z', -1, 'sync')];
    const forward = planPrune({ retentionDays: 7 }, points, T0).sort();
    expect(planPrune({ retentionDays: 7 }, [...points].reverse(), T0).sort()).toEqual(forward);
    expect(forward).toEqual(['x', 'y']);
  });
});

describe('applyRetention (database and manifests)', () => {
  let f: GroupsFixture;
  beforeAll(async () => {
    f = await openGroupsFixture();
    await f.agent('alpha');
  });
  afterAll(async () => f?.close());

  const policy = (retentionDays: number) => ({
    retentionDays,
    syncEvery: '1h',
    recoveryPoints: { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], times: ['20:00'] },
  });

  it('over simulated days prunes exactly the expected points, rows and manifests', async () => {
    const ds = await f.datasource('alpha', '/srv/sim');
    const loose = await f.datasource('alpha', '/srv/no-group');
    await createGroup(f, { name: 'sim', members: [{ agent: 'alpha', path: '/srv/sim' }], disk: policy(3) });
    const daily: string[] = [];
    const looseIds: string[] = [];
    for (let day = 0; day < 6; day++) {
      // Each day: two syncs during the day, one recovery point in the evening.
      const s1 = await f.point(ds, at(day, 2), { origin: 'sync' });
      const s2 = await f.point(ds, at(day, 4), { origin: 'sync' });
      const rp = await f.point(ds, at(day, 8));
      daily.push(rp);
      looseIds.push(await f.point(loose, at(day, 8), { origin: 'sync' }));
      const report = await applyRetention(f, at(day, 9));
      const pruned = report.pruned.map((x) => x.rpId).sort();
      // The day's syncs are superseded by its recovery point; the point of 3 days + 1 h ago expires.
      const expected = [s1, s2, ...(day >= 3 ? [daily[day - 3]!] : [])].sort();
      expect(pruned).toEqual(expected);
      expect(report.manifestErrors).toEqual([]);
      for (const id of pruned) expect(await f.manifests.exists(id)).toBe(false);
      expect(report.pruned.every((x) => x.datasourceId === ds)).toBe(true);
    }
    expect(await f.pointIds(ds)).toEqual(daily.slice(3));
    for (const id of daily.slice(3)) expect(await f.manifests.exists(id)).toBe(true);
    // A datasource in no group is never pruned.
    expect(await f.pointIds(loose)).toEqual(looseIds);
    // Vault points are not disk retention's business.
    const vault = await f.point(ds, at(-30), { tier: 'vault' });
    await applyRetention(f, at(10));
    expect(await f.pointIds(ds)).toContain(vault);
  });

  /** Changes the stored policy directly: what a retention run sees, without the prune of an update. */
  async function setRetention(name: string, retentionDays: number) {
    const [row] = await f.db.select().from(protectionGroups).where(eq(protectionGroups.name, name));
    const policy = row!.policy as { disk: Record<string, unknown> };
    await f.db
      .update(protectionGroups)
      .set({ policy: { ...policy, disk: { ...policy.disk, retentionDays } } })
      .where(eq(protectionGroups.name, name));
  }

  it('applies a retention change retroactively: longer keeps, shorter prunes', async () => {
    const ds = await f.datasource('alpha', '/srv/change');
    await createGroup(f, {
      name: 'change',
      members: [{ agent: 'alpha', path: '/srv/change' }],
      disk: policy(10),
    });
    const ids: string[] = [];
    for (let day = 0; day < 8; day++) ids.push(await f.point(ds, at(day)));
    const now = at(8, 1);
    expect((await applyRetention(f, now)).pruned).toEqual([]);

    // Shorter: what is now older than 3 days (days 0..5) goes at the next run.
    await setRetention('change', 3);
    const shorter = await applyRetention(f, now);
    expect(shorter.pruned.map((x) => x.rpId).sort()).toEqual(ids.slice(0, 6).sort());
    expect(shorter.pruned[0]!.createdAt).toMatch(/^\d{4}-\d\d-\d\dT/);

    // Longer: what is left stays, also past the day the 3-day policy would have pruned it.
    await setRetention('change', 30);
    expect((await applyRetention(f, at(20))).pruned).toEqual([]);
    expect(await f.pointIds(ds)).toEqual(ids.slice(6));
  });

  it('keeps the newest ok point of a datasource whose backups keep failing', async () => {
    const ds = await f.datasource('alpha', '/srv/failing');
    await createGroup(f, {
      name: 'failing',
      members: [{ agent: 'alpha', path: '/srv/failing' }],
      disk: policy(2),
    });
    const good = await f.point(ds, at(0), { origin: 'sync' });
    // Backups fail from now on: no new point. Later, verify finds a newer one corrupt.
    const corrupt = await f.point(ds, at(1), { status: 'corrupt' });
    for (let day = 2; day < 30; day += 5) {
      const report = await applyRetention(f, at(day));
      expect(report.pruned.map((x) => x.rpId)).not.toContain(good);
    }
    expect(await f.pointIds(ds)).toEqual([good]);
    expect(await f.manifests.exists(corrupt)).toBe(false);
    expect(await f.manifests.exists(good)).toBe(true);
  });
});
