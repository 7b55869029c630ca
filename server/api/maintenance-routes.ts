import type { Env, Hono } from 'hono';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { ChunkStore } from '../chunk-store/chunk-store.ts';
import type { Db } from '../db/database.ts';
import { AppError } from '../errors.ts';
import { collectGarbage } from '../gc/gc.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { verifyRecoveryPoints } from '../verify/verify.ts';

/*
 * Store maintenance, run now and answered with the report (the queued `gc` and `verify` jobs
 * run the same functions):
 *   POST /gc      {graceMs?, dryRun?}   garbage collection (server/gc/gc.ts)
 *   POST /verify  {rpIds?}              re-read and re-hash blocks, quarantine damage (server/verify)
 */

export interface MaintenanceRouteDeps {
  db: Db;
  log: Logger;
  store?: ChunkStore;
  manifests?: ManifestStore;
}

const gcBody = z.strictObject({
  graceMs: z
    .number()
    .int()
    .min(0)
    .max(365 * 86_400_000)
    .optional(),
  dryRun: z.boolean().optional(),
});
const verifyBody = z.strictObject({
  rpIds: z.array(z.string().min(1).max(100)).min(1).max(10_000).optional(),
});

async function body<T>(c: { req: { text(): Promise<string> } }, schema: z.ZodType<T>): Promise<T> {
  const text = await c.req.text();
  let parsed: unknown = {};
  if (text.trim() !== '') {
    try {
      parsed = JSON.parse(text);
    } catch {
      throw new AppError('INVALID_INPUT', 'request body must be JSON');
    }
  }
  return schema.parse(parsed);
}

/** Mounted by createApi after its admin-token check, so every route here needs the admin token. */
export function registerMaintenanceRoutes<E extends Env>(app: Hono<E>, deps: MaintenanceRouteDeps): void {
  const stores = () => {
    if (!deps.store || !deps.manifests)
      throw new AppError('INTERNAL', 'this server was started without access to its chunk store');
    return { db: deps.db, store: deps.store, manifests: deps.manifests, log: deps.log };
  };

  app.post('/api/v1/gc', async (c) => {
    const input = await body(c, gcBody);
    const d = stores();
    return c.json(
      await collectGarbage(d, { graceMs: input.graceMs ?? d.store.gcGraceMs, dryRun: input.dryRun }).catch(
        failed('garbage collection'),
      ),
    );
  });

  app.post('/api/v1/verify', async (c) => {
    const input = await body(c, verifyBody);
    return c.json(await verifyRecoveryPoints(stores(), { rpIds: input.rpIds }).catch(failed('verify')));
  });

  /** A failure the administrator should read (e.g. an unreadable manifest), not "internal error". */
  const failed = (what: string) => (err: unknown) => {
    if (err instanceof AppError) throw err;
    deps.log.error({ err }, `${what} failed`);
    throw new AppError('INTERNAL', `${what} failed: ${(err as Error).message}`);
  };
}
