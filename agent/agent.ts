import os from 'node:os';
import type { Logger } from 'pino';
import type { ServerMessage } from '../protocol/messages.ts';
import { BackupJob } from './jobs/backup-job.ts';
import { RestoreJob } from './jobs/restore-job.ts';
import { type LinkOptions, ServerLink } from './link/server-link.ts';
import { loadState } from './state.ts';
import { beginBusy } from '../lib/release-memory.ts';
import { createWorkerPool } from '../lib/worker-pool.ts';
import { validateThrottlePolicy } from '../protocol/throttle-policy.ts';
import { Throttle } from './link/throttle.ts';

interface RunningJob {
  handle(message: ServerMessage): void;
  cancel(reason: string): void;
}

export interface RunningAgent {
  name: string;
  /** Resolves when stopped; rejects when the server refuses this agent for good (revoked, bad credential). */
  done: Promise<void>;
  stop(): void;
}

/** The agent service: keeps the link to the server up and does the jobs the server sends. */
export async function runAgent(stateDir: string, log: Logger, opts: LinkOptions = {}): Promise<RunningAgent> {
  const state = await loadState(stateDir);
  const jobs = new Map<string, RunningJob>();
  // Hashing and compression of read blocks run here, off the event loop.
  // One core is left to the main thread (reading, the link).
  const pool = createWorkerPool(
    new URL('./backup/block-worker.ts', import.meta.url),
    Math.max(1, os.availableParallelism() - 1),
  );
  // Upload bandwidth limit; the server pushes the policy at connect time and on every change.
  const throttle = new Throttle({});
  const jobLog = (jobId: string) => log.child({ jobId });

  const link: ServerLink = new ServerLink(
    state,
    log,
    {
      onConnected: () => {},
      onDisconnected: (reason) => {
        // Jobs cannot outlive the connection they run on; the server fails them on its side too.
        for (const job of jobs.values()) job.cancel(`connection to the server lost (${reason})`);
        jobs.clear();
      },
      onMessage: (message) => {
        if (message.t === 'agent.settings') {
          try {
            throttle.setPolicy(validateThrottlePolicy(message.throttle ?? {}));
            log.info({ throttle: message.throttle }, 'settings updated');
          } catch (err) {
            log.error({ err: (err as Error).message }, 'ignoring invalid throttle policy from server');
          }
          return;
        }
        if (message.t === 'backup.start') {
          const job = new BackupJob(
            link.channel(),
            stateDir,
            message,
            { pool, throttle },
            jobLog(message.jobId),
          );
          jobs.set(message.jobId, job);
          const endBusy = beginBusy();
          if (message.resume) log.info({ jobId: message.jobId }, 'resuming interrupted backup');
          // A resumed job reuses the id: only remove the entry if it is still this run's.
          void job.run().finally(() => {
            endBusy();
            if (jobs.get(message.jobId) === job) jobs.delete(message.jobId);
          });
          return;
        }
        if (message.t === 'restore.start') {
          const endBusy = beginBusy();
          const job = new RestoreJob(link.channel(), message, jobLog(message.jobId), () => {
            endBusy();
            jobs.delete(message.jobId);
          });
          jobs.set(message.jobId, job);
          job.run();
          return;
        }
        if ('jobId' in message) jobs.get(message.jobId)?.handle(message);
      },
    },
    opts,
  );
  log.info({ agent: state.name, server: state.serverUrl }, 'agent starting');
  const done = link.run().finally(() => pool.destroy());
  return { name: state.name, done, stop: () => link.stop() };
}
