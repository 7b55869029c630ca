import type { Env, Hono } from 'hono';
import { z } from 'zod';
import { AppError } from '../errors.ts';
import { jobView } from '../jobs/job-repo.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { requestOnlineBackup } from '../vault/online-backup.ts';
import {
  deleteRecoveryPoint,
  requestPurge,
  requestVaultCheck,
  requestVaultRetention,
  undeleteRecoveryPoint,
} from '../vault/vault-maintenance.ts';
import type { VaultService } from '../vault/vault-service.ts';
import type { Db } from '../db/database.ts';

/*
 * The vault and online backups:
 *   GET /vault (status), POST /vault/create, POST /vault/attach {backend, passphraseFile},
 *   POST /online-backups {group?, datasourceIds?},
 *   POST /vault/check {readData?} and POST /vault/prune {dryRun?, retention?}: queue a
 *   vault-check or vault-retention job (answer: the job),
 *   DELETE /recovery-points/:id (vault point: soft delete; disk point: deleted at once),
 *   POST /recovery-points/:id/undelete, POST /recovery-points/:id/purge (vault point: queues a
 *   vault-retention job that purges it and prunes; disk point: deleted at once).
 * Bodies name files on the server's machine (passphrase, credentials), never secrets.
 */

export interface VaultRouteDeps {
  db: Db;
  manifests: ManifestStore;
  vault?: VaultService;
  jobQueued(agentId: string): void;
}

const setupBody = z.strictObject({
  backend: z.discriminatedUnion('type', [
    z.strictObject({ type: z.literal('local'), path: z.string().min(1).max(4096).optional() }),
    z.strictObject({
      type: z.literal('azure'),
      container: z.string().min(1).max(255),
      connectionStringFile: z.string().min(1).max(4096),
      prefix: z.string().max(1024).optional(),
    }),
    z.strictObject({
      type: z.literal('s3'),
      endpoint: z.string().min(1).max(2048),
      bucket: z.string().min(1).max(255),
      region: z.string().min(1).max(100).optional(),
      credentialsFile: z.string().min(1).max(4096),
      prefix: z.string().max(1024).optional(),
      forcePathStyle: z.boolean().optional(),
    }),
  ]),
  passphraseFile: z.string().min(1).max(4096),
});

const onlineBody = z.strictObject({
  group: z.string().min(1).max(63).optional(),
  datasourceIds: z.array(z.string().min(1).max(100)).max(10_000).optional(),
});

const checkBody = z.strictObject({ readData: z.boolean().optional() });
const pruneBody = z.strictObject({ dryRun: z.boolean().optional(), retention: z.boolean().optional() });

async function body<T>(c: { req: { json(): Promise<unknown> } }, schema: z.ZodType<T>): Promise<T> {
  let value: unknown;
  try {
    value = await c.req.json();
  } catch {
    throw new AppError('INVALID_INPUT', 'request body must be JSON');
  }
  return schema.parse(value);
}

export function registerVaultRoutes<E extends Env>(app: Hono<E>, deps: VaultRouteDeps): void {
  const service = () => {
    if (!deps.vault) throw new AppError('CONFLICT', 'this server has no vault service');
    return deps.vault;
  };
  app.get('/api/v1/vault', async (c) => c.json(await service().status()));
  app.post('/api/v1/vault/create', async (c) => {
    const b = await body(c, setupBody);
    return c.json(await service().create(b as never), 201);
  });
  app.post('/api/v1/vault/attach', async (c) => {
    const b = await body(c, setupBody);
    return c.json(await service().attach(b as never));
  });
  app.post('/api/v1/vault/check', async (c) => {
    const b = await body(c, checkBody);
    if (!(await service().get())) throw new AppError('CONFLICT', 'no vault is configured');
    const job = await requestVaultCheck(deps.db, { readData: b.readData ?? false });
    deps.jobQueued('');
    return c.json(jobView(job), 201);
  });
  app.post('/api/v1/vault/prune', async (c) => {
    const b = await body(c, pruneBody);
    if (!(await service().get())) throw new AppError('CONFLICT', 'no vault is configured');
    const job = await requestVaultRetention(deps.db, {
      dryRun: b.dryRun ?? false,
      retention: b.retention ?? true,
    });
    deps.jobQueued('');
    return c.json(jobView(job), 201);
  });
  app.delete('/api/v1/recovery-points/:id', async (c) =>
    c.json(await deleteRecoveryPoint(deps, c.req.param('id'))),
  );
  app.post('/api/v1/recovery-points/:id/undelete', async (c) =>
    c.json(await undeleteRecoveryPoint(deps, c.req.param('id'))),
  );
  app.post('/api/v1/recovery-points/:id/purge', async (c) => {
    const res = await requestPurge(deps, c.req.param('id'));
    if ('job' in res) {
      deps.jobQueued('');
      return c.json({ job: jobView(res.job) }, 201);
    }
    return c.json(res);
  });
  app.post('/api/v1/online-backups', async (c) => {
    const job = await requestOnlineBackup(deps.db, await body(c, onlineBody));
    deps.jobQueued('');
    return c.json(jobView(job), 201);
  });
}
