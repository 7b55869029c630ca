import type { Env, Hono } from 'hono';
import { z } from 'zod';
import { AppError } from '../errors.ts';
import { jobView } from '../jobs/job-repo.ts';
import { requestOnlineBackup } from '../vault/online-backup.ts';
import type { VaultService } from '../vault/vault-service.ts';
import type { Db } from '../db/database.ts';

/*
 * The vault and online backups:
 *   GET /vault (status), POST /vault/create, POST /vault/attach {backend, passphraseFile},
 *   POST /online-backups {group?, datasourceIds?}.
 * Bodies name files on the server's machine (passphrase, credentials), never secrets.
 */

export interface VaultRouteDeps {
  db: Db;
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
  app.post('/api/v1/online-backups', async (c) => {
    const job = await requestOnlineBackup(deps.db, await body(c, onlineBody));
    deps.jobQueued('');
    return c.json(jobView(job), 201);
  });
}
