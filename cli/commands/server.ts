import { access } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import pino from 'pino';
import { enrollAgent } from '../../agent/enroll.ts';
import { runAgent } from '../../agent/agent.ts';
import { parseDuration } from '../../lib/duration.ts';
import { formatFingerprint } from '../../protocol/tls-pin.ts';
import {
  dataPaths,
  DEFAULT_PORT,
  DEFAULT_RESUME_WINDOW,
  DEFAULTS,
  localTimeZone,
  parseListen,
  resolveDataDir,
  type ServerConfig,
} from '../../server/config.ts';
import type { startServer as StartServer } from '../../server/server.ts';
import os from 'node:os';

export function registerServerCommands(program: Command): void {
  const server = program.command('server').description('run the backup server');
  server
    .command('start')
    .description('start the server (API, console and agent gateway on one port)')
    .option('--data <dir>', 'data folder: database, chunk store, certificate, admin token', 'data')
    .option('--listen <host:port>', 'address to listen on', `127.0.0.1:${DEFAULT_PORT}`)
    .option(
      '--database-url <url>',
      'PostgreSQL URL (default: embedded PGlite in the data folder; env DATABASE_URL)',
    )
    .option('--no-local-agent', 'do not enroll and run an agent for this machine')
    .option('--no-tls', 'serve plain HTTP/WS (loopback tests, or behind a TLS-terminating proxy)')
    .option('--cert <file>', 'PEM certificate to serve instead of the self-signed one')
    .option('--key <file>', 'PEM private key of --cert')
    .option('--public-url <url>', 'URL other machines use to reach this server (for enrollment commands)')
    .option('--log-level <level>', 'trace, debug, info, warn or error', 'info')
    .option(
      '--resume-window <duration>',
      'how long an interrupted backup waits for its agent to resume',
      DEFAULT_RESUME_WINDOW,
    )
    .option(
      '--server-id <id>',
      "this process's id, owner of its job leases (default: kept in DATA/server-id; give each server sharing a data folder its own)",
    )
    .option('--time-zone <iana>', "time zone of schedule times (default: this machine's)")
    .option('--max-jobs <n>', 'jobs running at once in this server process', String(DEFAULTS.maxJobs))
    .option('--max-jobs-per-agent <n>', 'jobs running at once per agent', String(DEFAULTS.maxJobsPerAgent))
    .option(
      '--job-lease <duration>',
      "lease of a running job; a dead server's jobs are taken over after it",
      DEFAULTS.jobLease,
    )
    .option(
      '--retry-backoff <duration>',
      'first retry delay of a failed scheduled job (x4 each time)',
      DEFAULTS.retryBackoff,
    )
    .option(
      '--offline-wait <duration>',
      'queued jobs of an agent offline this long fail',
      DEFAULTS.offlineWait,
    )
    .option(
      '--gc-grace <duration>',
      'garbage collection keeps blocks touched this recently',
      DEFAULTS.gcGrace,
    )
    .option(
      '--store-alert <percent>',
      "alert when the store's disk is this full",
      String(DEFAULTS.storeAlertPercent),
    )
    .action(async (opts) => {
      if (Boolean(opts.cert) !== Boolean(opts.key)) throw new Error('--cert and --key go together');
      const timeZone = opts.timeZone ?? localTimeZone();
      if (!isValidTimeZone(timeZone)) throw new Error(`--time-zone: unknown time zone "${timeZone}"`);
      const config: ServerConfig = {
        dataDir: resolveDataDir(opts.data),
        ...parseListen(opts.listen),
        databaseUrl: opts.databaseUrl ?? process.env.DATABASE_URL,
        tls: opts.tls,
        certFile: opts.cert,
        keyFile: opts.key,
        localAgent: opts.localAgent,
        logLevel: opts.logLevel,
        resumeWindowMs: parseDuration(opts.resumeWindow),
        jobs: {
          leaseMs: parseDuration(opts.jobLease),
          maxJobs: positiveInt('--max-jobs', opts.maxJobs),
          maxJobsPerAgent: positiveInt('--max-jobs-per-agent', opts.maxJobsPerAgent),
          retryBackoffMs: parseDuration(opts.retryBackoff),
          offlineWaitMs: parseDuration(opts.offlineWait),
        },
        timeZone,
        serverId: opts.serverId === undefined ? undefined : serverIdOf(opts.serverId),
        gcGraceMs: parseDuration(opts.gcGrace),
        storeAlertPercent: positiveInt('--store-alert', opts.storeAlert),
        publicUrl: opts.publicUrl?.replace(/\/+$/, ''),
      };
      const log = pino({ level: config.logLevel });
      // Loaded here, not at the top: the agent and admin commands share this entry point.
      const { startServer } = await import('../../server/server.ts');
      const running = await startServer(config, log);
      let agent: Awaited<ReturnType<typeof runAgent>> | undefined;
      if (config.localAgent) agent = await startLocalAgent(config, running, log);

      const paths = dataPaths(config.dataDir);
      const lines = [
        '',
        `Holdfast server is running at ${running.url}`,
        running.fingerprint
          ? `  certificate fingerprint: ${formatFingerprint(running.fingerprint)}`
          : '  TLS is off (--no-tls)',
        `  admin token: ${paths.adminToken} (the CLI reads it from there; elsewhere pass --token)`,
        agent
          ? `  local agent "${agent.name}" runs inside this server (state in ${paths.localAgentState})`
          : '',
        '  enroll another machine: run "holdfast enroll-token create" here and the command it prints there',
        '',
      ];
      process.stdout.write(`${lines.filter((l) => l !== '').join('\n')}\n\n`);

      const stop = async () => {
        log.info('shutting down');
        agent?.stop();
        await running.close();
        process.exit(0);
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
    });
}

/** Enrolls (first start only) and runs an agent for this machine through the real enrollment path. */
async function startLocalAgent(
  config: ServerConfig,
  running: Awaited<ReturnType<typeof StartServer>>,
  log: pino.Logger,
) {
  const stateDir = dataPaths(config.dataDir).localAgentState;
  const enrolled = await access(path.join(stateDir, 'agent.json')).then(
    () => true,
    () => false,
  );
  const url = running.url.replace('0.0.0.0', '127.0.0.1').replace('[::]', '[::1]');
  if (!enrolled) {
    const { createEnrollmentToken } = await import('../../server/identity/enrollment.ts');
    const { token } = await createEnrollmentToken(running.db, 5 * 60_000);
    await enrollAgent({
      serverUrl: url,
      token,
      fingerprint: running.fingerprint,
      stateDir,
      name: localAgentName(),
    });
  }
  const agent = await runAgent(stateDir, log.child({ part: 'local-agent' }));
  agent.done.catch((err) => log.error({ err: (err as Error).message }, 'local agent stopped'));
  return agent;
}

function localAgentName(): string {
  const name = os
    .hostname()
    .split('.')[0]!
    .replace(/[^A-Za-z0-9._-]/g, '-');
  return /^[A-Za-z0-9]/.test(name) ? name.slice(0, 63) : `host-${name}`.slice(0, 63);
}

function positiveInt(flag: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1)
    throw new Error(`${flag} must be a whole number of at least 1, got "${text}"`);
  return n;
}

function isValidTimeZone(zone: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}

function serverIdOf(text: string): string {
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(text))
    throw new Error(
      `--server-id must be 1 to 64 letters, digits, dots, dashes or underscores, got "${text}"`,
    );
  return text;
}
