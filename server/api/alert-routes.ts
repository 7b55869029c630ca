import type { Env, Hono } from 'hono';
import { alertView, listAlerts } from '../alerts/alerts.ts';
import type { Db } from '../db/database.ts';
import { AppError } from '../errors.ts';
import { upcomingRuns } from '../scheduler/upcoming.ts';

/*
 * Alerts and scheduled work:
 *   GET /alerts (?all=1: resolved ones too, newest first), GET /schedule/upcoming (?limit=N).
 */

export interface AlertRouteDeps {
  db: Db;
  /** The scheduler's zone; default the server's own, as the scheduler's default. */
  timeZone?: string;
}

function flag(name: string, value: string | undefined): boolean {
  if (value === undefined || value === '0' || value === 'false') return false;
  if (value === '' || value === '1' || value === 'true') return true;
  throw new AppError('INVALID_INPUT', `${name} must be 1 or 0, got "${value}"`);
}

function limit(value: string | undefined): number {
  if (value === undefined) return 100;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 1000)
    throw new AppError('INVALID_INPUT', `limit must be a whole number from 1 to 1000, got "${value}"`);
  return n;
}

/** Mounted by createApi after its admin-token check, so every route here needs the admin token. */
export function registerAlertRoutes<E extends Env>(app: Hono<E>, deps: AlertRouteDeps): void {
  const { db } = deps;
  app.get('/api/v1/alerts', async (c) =>
    c.json((await listAlerts(db, { all: flag('all', c.req.query('all')) })).map(alertView)),
  );
  app.get('/api/v1/schedule/upcoming', async (c) =>
    c.json(
      await upcomingRuns(db, new Date(), { limit: limit(c.req.query('limit')), timeZone: deps.timeZone }),
    ),
  );
}
