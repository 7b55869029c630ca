import { Hono } from 'hono';
import type { Logger } from 'pino';
import { z } from 'zod';
import { formatFingerprint } from '../../protocol/tls-pin.ts';
import type { Db } from '../db/database.ts';
import { agents } from '../db/schema.ts';
import { addDatasource, listDatasources } from '../datasources/datasources.ts';
import { AppError } from '../errors.ts';
import { isAdminToken } from '../identity/admin-token.ts';
import { revokeAgent, setAgentThrottle } from '../identity/agents.ts';
import { type ThrottlePolicy, validateThrottlePolicy } from '../../protocol/throttle-policy.ts';
import { createEnrollmentToken, enrollAgent } from '../identity/enrollment.ts';
import { getJob, jobView, listJobs, type JobRow } from '../jobs/job-repo.ts';
import {
  requestBackup,
  requestConsistencyCheck,
  requestGc,
  requestRestore,
  requestVerify,
} from '../jobs/job-requests.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { listRecoveryPoints } from '../recovery-points/recovery-points.ts';
import { errorResponse } from './error-handler.ts';
import { registerAlertRoutes } from './alert-routes.ts';
import { registerGroupRoutes } from './group-routes.ts';
import { registerVaultRoutes } from './vault-routes.ts';
import type { VaultService } from '../vault/vault-service.ts';
import { parseDuration } from '../../lib/duration.ts';

export interface ApiDeps {
  db: Db;
  manifests: ManifestStore;
  /** The zone of schedule times, as the scheduler's (for upcoming runs). */
  timeZone?: string;
  log: Logger;
  /** SHA-256 of the TLS certificate, or undefined without TLS. */
  fingerprint: string | undefined;
  /** Put into enrollment commands; defaults to the URL the request came in on. */
  publicUrl?: string;
  isOnline(agentId: string): boolean;
  /** Since when the agent's live connection (if any) is up. */
  connectedSince(agentId: string): Date | undefined;
  /** A job was queued for this agent. */
  jobQueued(agentId: string): void;
  /** The agent was revoked: its live connection, if any, must end now. */
  agentRevoked(agentId: string): void;
  /** The agent's settings changed: push them to its live connection, if any. */
  agentSettingsChanged(agentId: string, settings: { throttle: Record<string, unknown> | null }): void;
  /** The vault (server/vault); routes answer CONFLICT without it. */
  vault?: VaultService;
}

type Env = { Variables: { log: Logger } };

const enrollBody = z.object({
  token: z.string().min(1).max(200),
  name: z.string().min(1).max(63),
  hostname: z.string().max(255).default(''),
});
const tokenBody = z.object({ ttl: z.string().max(20).default('24h') });
const datasourceBody = z.object({
  agent: z.string().min(1).max(63),
  path: z.string().min(1).max(4096),
  kind: z.enum(['files', 'image']).default('files'),
  blockSize: z.number().int().optional(),
  compress: z.boolean().optional(),
  preScript: z.string().min(1).max(4096).nullable().optional(),
  postScript: z.string().min(1).max(4096).nullable().optional(),
});
const backupBody = z.object({ datasourceId: z.string().min(1).max(100), full: z.boolean().default(false) });
const jobBody = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('verify'),
    rpIds: z.array(z.string().min(1).max(100)).max(10_000).optional(),
  }),
  z.strictObject({
    type: z.literal('gc'),
    graceMs: z
      .number()
      .int()
      .min(0)
      .max(365 * 86_400_000)
      .optional(),
    dryRun: z.boolean().optional(),
  }),
  z.strictObject({ type: z.literal('consistency-check'), datasourceId: z.string().min(1).max(100) }),
]);
const restoreBody = z.object({
  rpId: z.string().min(1).max(100),
  target: z.string().min(1).max(4096),
  agent: z.string().min(1).max(63).optional(),
  paths: z.array(z.string().min(1).max(4096)).max(1000).default([]),
});

/** The versioned REST API. Handlers parse input, call a service, shape the output. */
export function createApi(deps: ApiDeps): Hono<Env> {
  const { db } = deps;
  const app = new Hono<Env>();
  app.onError(errorResponse);
  app.notFound((c) =>
    c.json({ error: { code: 'NOT_FOUND', message: `no route ${c.req.method} ${c.req.path}` } }, 404),
  );
  app.use('*', async (c, next) => {
    c.set('log', deps.log);
    await next();
  });

  const json = async <T>(c: { req: { json(): Promise<unknown> } }, schema: z.ZodType<T>): Promise<T> => {
    let body: unknown;
    try {
      body = await c.req.json();
    } catch {
      throw new AppError('INVALID_INPUT', 'request body must be JSON');
    }
    return schema.parse(body);
  };

  const agentNames = async () => new Map((await db.select().from(agents)).map((a) => [a.id, a.name]));
  const viewJob = async (job: JobRow) => jobView(job, (await agentNames()).get(job.agentId ?? ''));

  app.get('/api/v1/health', (c) => c.json({ ok: true }));

  // Enrollment is authorised by the one-time token itself, not by the admin token.
  app.post('/api/v1/enroll', async (c) => {
    const body = await json(c, enrollBody);
    const enrolled = await enrollAgent(db, body);
    deps.log.info({ agentId: enrolled.agentId, agent: enrolled.name }, 'agent enrolled');
    return c.json(enrolled, 201);
  });

  app.use('/api/v1/*', async (c, next) => {
    const auth = c.req.header('authorization') ?? '';
    const token = auth.startsWith('Bearer ') ? auth.slice(7).trim() : '';
    if (!token) throw new AppError('UNAUTHORIZED', 'missing admin token (Authorization: Bearer ...)');
    if (!(await isAdminToken(db, token))) throw new AppError('UNAUTHORIZED', 'invalid admin token');
    await next();
  });

  app.post('/api/v1/enroll-tokens', async (c) => {
    const body = await json(c, tokenBody);
    let ttlMs: number;
    try {
      ttlMs = parseDuration(body.ttl);
    } catch (err) {
      throw new AppError('INVALID_INPUT', `ttl: ${(err as Error).message}`);
    }
    const { token, expiresAt } = await createEnrollmentToken(db, ttlMs);
    const server = deps.publicUrl ?? new URL(c.req.url).origin;
    const fingerprint = deps.fingerprint ? formatFingerprint(deps.fingerprint) : null;
    const command =
      `holdfast agent enroll --server ${server} --token ${token}` +
      (fingerprint ? ` --fingerprint ${fingerprint}` : '');
    return c.json({ token, fingerprint, command, expiresAt: expiresAt.toISOString() }, 201);
  });

  app.get('/api/v1/agents', async (c) => {
    const rows = await db.select().from(agents).orderBy(agents.name);
    return c.json(
      rows.map((a) => ({
        id: a.id,
        name: a.name,
        hostname: a.hostname,
        agentVersion: a.agentVersion,
        online: deps.isOnline(a.id),
        connectedSince: deps.connectedSince(a.id)?.toISOString() ?? null,
        revoked: a.revokedAt !== null,
        throttle: a.throttle ?? null,
        createdAt: a.createdAt.toISOString(),
        lastSeenAt: a.lastSeenAt?.toISOString() ?? null,
      })),
    );
  });

  app.post('/api/v1/agents/:name/revoke', async (c) => {
    const agent = await revokeAgent(db, c.req.param('name'));
    deps.agentRevoked(agent.id);
    return c.json({ id: agent.id, name: agent.name, revoked: true });
  });

  // Bandwidth throttling (work hours, other hours, weekends); applies at once, also to running jobs.
  app.put('/api/v1/agents/:name/throttle', async (c) => {
    // A throttle policy, or null for unlimited.
    const body = await json(c, z.unknown());
    let policy: ThrottlePolicy | null = null;
    if (body !== null) {
      try {
        policy = validateThrottlePolicy(body);
      } catch (err) {
        throw new AppError('INVALID_INPUT', (err as Error).message);
      }
    }
    const agent = await setAgentThrottle(db, c.req.param('name'), policy);
    deps.agentSettingsChanged(agent.id, { throttle: policy as Record<string, unknown> | null });
    return c.json({ name: agent.name, throttle: policy });
  });

  app.post('/api/v1/datasources', async (c) =>
    c.json(await addDatasource(db, await json(c, datasourceBody)), 201),
  );
  app.get('/api/v1/datasources', async (c) => c.json(await listDatasources(db)));

  app.post('/api/v1/backups', async (c) => {
    const job = await requestBackup(db, await json(c, backupBody));
    deps.jobQueued(job.agentId!);
    return c.json(await viewJob(job), 201);
  });

  app.post('/api/v1/restores', async (c) => {
    const job = await requestRestore(db, await json(c, restoreBody));
    deps.jobQueued(job.agentId!);
    return c.json(await viewJob(job), 201);
  });

  app.get('/api/v1/recovery-points', async (c) => {
    const tier = c.req.query('tier');
    if (tier !== undefined && tier !== 'disk' && tier !== 'vault') {
      throw new AppError('INVALID_INPUT', 'tier must be "disk" or "vault"');
    }
    const deleted = c.req.query('deleted');
    return c.json(
      await listRecoveryPoints(db, {
        datasourceId: c.req.query('datasourceId'),
        tier,
        deleted: deleted === 'true' || deleted === '1',
      }),
    );
  });

  app.get('/api/v1/jobs', async (c) => {
    const names = await agentNames();
    return c.json((await listJobs(db)).map((j) => jobView(j, names.get(j.agentId ?? ''))));
  });
  // Server jobs and checks an administrator asks for: verify, gc, consistency-check.
  app.post('/api/v1/jobs', async (c) => {
    const body = await json(c, jobBody);
    const job =
      body.type === 'verify'
        ? await requestVerify(db, { rpIds: body.rpIds })
        : body.type === 'gc'
          ? await requestGc(db, { graceMs: body.graceMs, dryRun: body.dryRun })
          : await requestConsistencyCheck(db, { datasourceId: body.datasourceId });
    deps.jobQueued(job.agentId ?? '');
    return c.json(await viewJob(job), 201);
  });
  app.get('/api/v1/jobs/:id', async (c) => c.json(await viewJob(await getJob(db, c.req.param('id')))));

  registerGroupRoutes(app, deps);
  registerAlertRoutes(app, deps);
  registerVaultRoutes(app, deps);
  return app;
}
