import { mkdir } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import pino, { type Logger } from 'pino';
import { ProtocolError } from '../protocol/errors.ts';
import { createApi } from './api/app.ts';
import { ChunkStore } from './chunk-store/chunk-store.ts';
import { dataPaths, type ServerConfig } from './config.ts';
import { openDatabase } from './db/database.ts';
import { AGENT_PATH, Gateway } from './gateway/gateway.ts';
import { ensureAdminToken } from './identity/admin-token.ts';
import { JobRunner } from './jobs/job-runner.ts';
import { serverJobHooks } from './jobs/server-jobs.ts';
import { Upkeep } from './upkeep/upkeep.ts';
import { ManifestStore } from './manifest/manifest-store.ts';
import { loadOrCreateCertificate } from './tls/certificate.ts';
import { createWorkerPool } from '../lib/worker-pool.ts';
import type { Db } from './db/database.ts';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from '../lib/durable-fs.ts';
import { VaultService } from './vault/vault-service.ts';

export interface RunningServer {
  url: string;
  port: number;
  /** SHA-256 of the certificate (hex), undefined with --no-tls. */
  fingerprint: string | undefined;
  cert: string | undefined;
  db: Db;
  log: Logger;
  close(): Promise<void>;
}

/** Opens the database and stores, then serves the API and the agent gateway on one port. */
export async function startServer(
  config: ServerConfig,
  log: Logger = pino({ level: config.logLevel }),
): Promise<RunningServer> {
  const paths = dataPaths(config.dataDir);
  await mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir });
  const { db } = database;
  await ensureAdminToken(db, paths.adminToken);
  const serverId = config.serverId ?? (await loadOrCreateServerId(paths.serverId));

  const store = await ChunkStore.open(paths.store, { gcGraceMs: config.gcGraceMs });
  const manifests = await ManifestStore.open(config.dataDir);
  let gateway: Gateway | undefined;
  const vault = new VaultService({ db, store, manifests, log, dataDir: config.dataDir });
  // Decoding and hash checks of received blocks run off the event loop.
  const verifyPool = createWorkerPool(new URL('./backup/verify-worker.ts', import.meta.url));
  const runner = new JobRunner({
    db,
    store,
    manifests,
    verifyPool,
    gateway: () => gateway!,
    log,
    serverId,
    resumeWindowMs: config.resumeWindowMs,
    ...config.jobs,
    vault,
    hooks: serverJobHooks({ db, store, manifests, log, gcGraceMs: config.gcGraceMs, vault }),
  });
  gateway = new Gateway(db, log.child({ part: 'gateway' }), () => runner.kick());

  const cert = config.tls
    ? await loadOrCreateCertificate({
        certPath: paths.cert,
        keyPath: paths.key,
        tlsDir: paths.tlsDir,
        provided:
          config.certFile && config.keyFile
            ? { certFile: config.certFile, keyFile: config.keyFile }
            : undefined,
      })
    : undefined;

  const api = createApi({
    db,
    connectedSince: (id) => gateway!.get(id)?.connectedAt,
    manifests,
    timeZone: config.timeZone,
    log: log.child({ part: 'api' }),
    fingerprint: cert?.fingerprint,
    publicUrl: config.publicUrl,
    isOnline: (id) => gateway!.get(id) !== undefined,
    vault,
    jobQueued: () => runner.kick(),
    agentSettingsChanged: (agentId, settings) =>
      void gateway!
        .get(agentId)
        ?.send({ t: 'agent.settings', ...settings })
        .catch(() => {}),
    agentRevoked: (agentId) =>
      gateway!
        .get(agentId)
        ?.fail(new ProtocolError('PROTO_ERR_REVOKED', 'this agent was revoked by an administrator')),
  });
  const listener = getRequestListener(api.fetch);
  const server = cert
    ? https.createServer({ cert: cert.cert, key: cert.key }, listener)
    : http.createServer(listener);
  server.on('upgrade', (req, socket, head) => {
    if (new URL(req.url ?? '/', 'http://x').pathname !== AGENT_PATH) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
      return;
    }
    gateway!.handleUpgrade(req, socket, head);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(new Error(`cannot listen on ${config.host}:${config.port}: ${err.message}`)),
    );
    server.listen(config.port, config.host, () => resolve());
  }).catch(async (err) => {
    await database.close();
    throw err;
  });
  const port = (server.address() as AddressInfo).port;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const url = `${cert ? 'https' : 'http'}://${host}:${port}`;
  await runner.start();
  const upkeep = new Upkeep({
    db,
    manifests,
    log: log.child({ part: 'upkeep' }),
    timeZone: config.timeZone,
    storeDir: paths.store,
    storeAlertPercent: config.storeAlertPercent,
    isOnline: (id) => gateway!.get(id) !== undefined,
    jobQueued: () => runner.kick(),
  });
  upkeep.start();
  log.info({ url, database: database.driver, dataDir: config.dataDir, serverId }, 'server listening');

  return {
    url,
    port,
    fingerprint: cert?.fingerprint,
    cert: cert?.cert,
    db,
    log,
    async close() {
      await upkeep.stop();
      await gateway!.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await runner.drain();
      await verifyPool.destroy();
      await vault.close();
      await store.close();
      await database.close();
    },
  };
}

/** The id that owns this process's job leases; the same data folder restarted is the same server. */
async function loadOrCreateServerId(file: string): Promise<string> {
  const existing = await readFile(file, 'utf8').catch(() => '');
  if (existing.trim()) return existing.trim();
  const id = randomUUID();
  await writeFileAtomic(file, `${id}\n`, 0o644);
  return id;
}
