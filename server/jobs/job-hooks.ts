import type { Logger } from 'pino';
import type { Db } from '../db/database.ts';
import type { JobRow } from './job-repo.ts';

/**
 * What the job runner asks of the rest of the server: alerts on job outcomes, the work of
 * server-only jobs (verify, gc), and the two ends of a consistency check. server.ts wires the
 * real implementations (server/jobs/server-jobs.ts); the runner itself only moves jobs.
 */
export interface JobHooks {
  succeeded(db: Db, job: JobRow): Promise<void>;
  /** The job failed for good (no retries left). */
  failed(db: Db, job: JobRow, error: string): Promise<void>;
  /** Runs a verify or gc job; resolves with its report. */
  runServerJob(job: JobRow, log: Logger): Promise<unknown>;
  /** Before the full re-read of a consistency check: find what the server's copy lacks. */
  beforeConsistencyCheck(job: JobRow, log: Logger): Promise<void>;
  afterConsistencyCheck(job: JobRow, log: Logger): Promise<void>;
}

export const noHooks: JobHooks = {
  succeeded: async () => {},
  failed: async () => {},
  runServerJob: async (job) => {
    throw new Error(`this server cannot run ${job.type} jobs`);
  },
  beforeConsistencyCheck: async () => {},
  afterConsistencyCheck: async () => {},
};
