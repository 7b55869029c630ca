import type { Env, Hono } from 'hono';
import { z } from 'zod';
import type { Db } from '../db/database.ts';
import { AppError } from '../errors.ts';
import { applyConfig, exportConfig } from '../groups/apply.ts';
import { createGroup, deleteGroup, listGroups, showGroup, updateGroup } from '../groups/group-service.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';

/*
 * Protection groups and the declarative groups file:
 *   POST /groups, GET /groups, GET|PATCH|DELETE /groups/:name (?keepData=true),
 *   POST /config/apply {yaml, dryRun}, GET /config/export.
 * Group bodies are checked by the group service, which names every bad field at once.
 */

export interface GroupRouteDeps {
  db: Db;
  manifests: ManifestStore;
}

const MAX_YAML = 1024 * 1024;
const applyBody = z.strictObject({
  yaml: z
    .string({ error: 'yaml: must be the text of a groups file' })
    .max(MAX_YAML, { error: `yaml: must be at most ${MAX_YAML} characters` }),
  dryRun: z.boolean({ error: 'dryRun: must be true or false' }).default(false),
});

async function body(c: { req: { json(): Promise<unknown> } }): Promise<unknown> {
  try {
    return await c.req.json();
  } catch {
    throw new AppError('INVALID_INPUT', 'request body must be JSON');
  }
}

function keepDataParam(value: string | undefined): boolean {
  if (value === undefined || value === 'false' || value === '0') return false;
  if (value === 'true' || value === '1' || value === '') return true;
  throw new AppError('INVALID_INPUT', `keepData must be true or false, got "${value}"`);
}

/** Mounted by createApi after its admin-token check, so every route here needs the admin token. */
export function registerGroupRoutes<E extends Env>(app: Hono<E>, deps: GroupRouteDeps): void {
  const { db } = deps;
  app.get('/api/v1/groups', async (c) => c.json(await listGroups(db)));
  app.post('/api/v1/groups', async (c) => c.json(await createGroup(deps, await body(c)), 201));
  app.get('/api/v1/groups/:name', async (c) => c.json(await showGroup(db, c.req.param('name'))));
  app.patch('/api/v1/groups/:name', async (c) =>
    c.json(await updateGroup(deps, c.req.param('name'), await body(c))),
  );
  app.delete('/api/v1/groups/:name', async (c) =>
    c.json(
      await deleteGroup(deps, c.req.param('name'), { keepData: keepDataParam(c.req.query('keepData')) }),
    ),
  );

  app.post('/api/v1/config/apply', async (c) => {
    const r = applyBody.safeParse(await body(c));
    if (!r.success) throw new AppError('INVALID_INPUT', r.error.issues[0]?.message ?? 'invalid body');
    return c.json(await applyConfig(deps, r.data.yaml, { dryRun: r.data.dryRun }));
  });
  app.get('/api/v1/config/export', async (c) => c.json({ yaml: await exportConfig(db) }));
}
