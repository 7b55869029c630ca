import path from 'node:path';

/** Everything the server needs, read and validated once at start-up (cli/ builds it from flags). */
export interface ServerConfig {
  dataDir: string;
  host: string;
  port: number;
  /** PostgreSQL URL; absent means the embedded PGlite database under dataDir. */
  databaseUrl?: string;
  tls: boolean;
  /** Admin-provided certificate and key (PEM files); absent means a self-signed one in dataDir/tls. */
  certFile?: string;
  keyFile?: string;
  /** Enroll and run an agent for this machine inside the server process. */
  localAgent: boolean;
  /** The URL agents on other machines use to reach this server (put into enrollment commands). */
  publicUrl?: string;
  logLevel: string;
  /** How long a backup whose link dropped waits for its agent to come back and resume. */
  resumeWindowMs: number;
  /** The durable job queue: see server/jobs/job-queue.ts. */
  jobs: JobQueueConfig;
  /**
   * This process's id, the owner of its job leases. Default: kept in DATA/server-id. Processes
   * sharing one data folder (a high-availability group) each need their own.
   */
  serverId?: string;
  /** IANA time zone of recovery-point and other schedule times; default: this machine's. */
  timeZone: string;
  /** Garbage collection never sweeps a block touched more recently than this (server/gc). */
  gcGraceMs: number;
  /** Raise the store-full alert when the store's file system is this full (percent). */
  storeAlertPercent: number;
}

export interface JobQueueConfig {
  /** A claimed job is this process's until then unless renewed; a dead process's jobs are taken over after it. */
  leaseMs: number;
  /** Jobs running at once in this server process, and per agent. */
  maxJobs: number;
  maxJobsPerAgent: number;
  /** First retry delay of a failed scheduled job (then x4 each time). */
  retryBackoffMs: number;
  /** Queued jobs of an agent offline this long fail. */
  offlineWaitMs: number;
}

export const DEFAULT_RESUME_WINDOW = '10m';
export const DEFAULTS = {
  jobLease: '30s',
  maxJobs: 8,
  maxJobsPerAgent: 2,
  retryBackoff: '1m',
  offlineWait: '1h',
  gcGrace: '1h',
  storeAlertPercent: 90,
} as const;

export const localTimeZone = (): string => Intl.DateTimeFormat().resolvedOptions().timeZone;

export const DEFAULT_PORT = 8700;
export const DEFAULT_SERVER_URL = `https://127.0.0.1:${DEFAULT_PORT}`;

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(listen);
  if (!m) throw new Error(`--listen must be HOST:PORT, got "${listen}"`);
  const port = Number(m[2]);
  if (port < 0 || port > 65535) throw new Error(`--listen port out of range: ${m[2]}`);
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port };
}

export function resolveDataDir(dir: string | undefined): string {
  return path.resolve(dir ?? 'data');
}

export const dataPaths = (dataDir: string) => ({
  adminToken: path.join(dataDir, 'admin-token'),
  tlsDir: path.join(dataDir, 'tls'),
  cert: path.join(dataDir, 'tls', 'cert.pem'),
  key: path.join(dataDir, 'tls', 'key.pem'),
  store: path.join(dataDir, 'store'),
  localAgentState: path.join(dataDir, 'local-agent'),
  vault: path.join(dataDir, 'vault'),
  /** This server process's identity, the owner of its job leases; kept across restarts. */
  serverId: path.join(dataDir, 'server-id'),
});
