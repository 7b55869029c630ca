import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Hono } from 'hono';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backupFailed, backupSucceeded, replicaInconsistent } from '../alerts/alert-events.ts';
import type { AlertView } from '../alerts/alerts.ts';
import { openTestDatabase } from '../chunk-store/test-database.test-helpers.ts';
import { addMember } from '../scheduler/fixtures.test-helpers.ts';
import { registerAlertRoutes } from './alert-routes.ts';
import { errorResponse } from './error-handler.ts';

let dir: string;
let database: Awaited<ReturnType<typeof openTestDatabase>>;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-alert-routes-'));
  database = await openTestDatabase(dir);
});
afterAll(async () => {
  await database?.drop();
  await rm(dir, { recursive: true, force: true });
});

function api() {
  const app = new Hono();
  app.onError(errorResponse);
  registerAlertRoutes(app, { db: database.db, timeZone: 'UTC' });
  return app;
}

describe('alert routes', () => {
  it('lists active alerts, and resolved ones with ?all=1', async () => {
    const { db } = database;
    const { ds } = await addMember(db, {
      syncEvery: '1h',
      recoveryPoints: { days: ['mon'], times: ['08:00'] },
    });
    await backupFailed(db, ds, { id: 'j1' }, 'boom');
    await replicaInconsistent(db, ds, 'verify found damage');
    await backupSucceeded(db, ds.id);

    const active = (await (await api().request('/api/v1/alerts')).json()) as AlertView[];
    expect(active.map((a) => a.kind)).toEqual(['replica-inconsistent']);
    const all = (await (await api().request('/api/v1/alerts?all=1')).json()) as AlertView[];
    expect(all.map((a) => `${a.kind}:${a.state}`).sort()).toEqual([
      'backup-failed:resolved',
      'replica-inconsistent:active',
    ]);
    expect((await api().request('/api/v1/alerts?all=yes')).status).toBe(400);
  });

  it('lists upcoming scheduled runs', async () => {
    const { db } = database;
    const { ds } = await addMember(db, {
      syncEvery: '1h',
      recoveryPoints: { days: ['mon'], times: ['08:00'] },
    });
    const res = await api().request('/api/v1/schedule/upcoming?limit=1000');
    expect(res.status).toBe(200);
    const runs = (await res.json()) as { datasourceId: string; kind: string; at: string }[];
    const run = runs.find((r) => r.datasourceId === ds.id);
    expect(run?.kind).toMatch(/^(sync|recovery-point)$/);
    // The next whole hour (syncs every hour from midnight, UTC), at most an hour away.
    expect(Date.parse(run!.at) - Date.now()).toBeLessThanOrEqual(3_600_000);
    expect(new Date(run!.at).getUTCMinutes()).toBe(0);
    expect((await api().request('/api/v1/schedule/upcoming?limit=0')).status).toBe(400);
  });
});
