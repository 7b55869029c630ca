import type { JobView } from '../server/jobs/job-repo.ts';
import type { AdminClient } from './admin-client.ts';

export const TERMINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);

/** Polls a job until it ended. */
export async function followJob(client: AdminClient, job: JobView): Promise<JobView> {
  let current = job;
  while (!TERMINAL_STATES.has(current.state)) {
    await new Promise((r) => setTimeout(r, 300));
    current = await client.get<JobView>(`/jobs/${current.id}`);
  }
  return current;
}

/** Follows a server job (verify, gc, vault jobs) to its end and returns its report; a job that did not succeed is an error. */
export async function serverJobResult<T>(client: AdminClient, queued: JobView): Promise<T> {
  const job = await followJob(client, queued);
  if (job.state !== 'succeeded') throw new Error(`job ${job.id} ${job.state}: ${job.error ?? ''}`);
  return job.result as T;
}
