import type { Command } from 'commander';
import type { JobView } from '../../server/jobs/job-repo.ts';
import { AdminClient, type AdminOptions } from '../admin-client.ts';
import { followJob, serverJobResult, TERMINAL_STATES } from '../job-wait.ts';
import { humanBytes, printJson, printTable } from '../output.ts';

type Opts = AdminOptions & { json?: boolean };

/** Options every admin command takes. */
export function adminCommand(parent: Command, name: string, description: string): Command {
  return parent
    .command(name)
    .description(description)
    .option('--server <url>', 'server URL (env HOLDFAST_SERVER; default https://127.0.0.1:8700)')
    .option('--fingerprint <sha256>', 'pin the server certificate (env HOLDFAST_FINGERPRINT)')
    .option('--token <token>', 'admin token (env HOLDFAST_TOKEN; default: read from DATA/admin-token)')
    .option('--data <dir>', "the server's data folder, for its admin token and certificate", 'data')
    .option('--json', 'print JSON');
}

/** "64K", "1M", "65536" -> bytes (also bytes per second for rates). */
function parseSize(text: string): number {
  const m = /^(\d+)([KkMm]?)$/.exec(text.trim());
  if (!m) throw new Error(`not a size: "${text}" (use e.g. 64K or 1M)`);
  const unit = m[2]!.toUpperCase();
  return Number(m[1]) * (unit === 'K' ? 1024 : unit === 'M' ? 1024 * 1024 : 1);
}

async function waitForJob(client: AdminClient, id: string, json: boolean): Promise<JobView> {
  const job = await followJob(client, await client.get<JobView>(`/jobs/${id}`));
  if (!json) printJob(job);
  return job;
}

function printJob(job: JobView): void {
  const lines = [
    `job ${job.id}: ${job.type} ${job.state}`,
    `  agent: ${job.agent ?? job.agentId}`,
    job.startedAt ? `  started: ${job.startedAt}` : '',
    job.finishedAt ? `  finished: ${job.finishedAt}` : '',
    job.state === 'running'
      ? `  progress: ${humanBytes(job.bytesDone)}${job.bytesTotal ? ` of ${humanBytes(job.bytesTotal)} (${((100 * job.bytesDone) / Math.max(1, job.bytesTotal)).toFixed(1)}%)` : ''}` +
        `${job.rate ? `  ${humanBytes(job.rate)}/s` : ''}${job.etaSeconds !== null ? `  ETA ${job.etaSeconds} s` : ''}`
      : '',
    job.attempts > 1 ? `  attempts: ${job.attempts} (resumed after interruptions)` : '',
    `  files: ${job.files}  scanned: ${humanBytes(job.bytesScanned)}  sent: ${humanBytes(job.bytesSent)}  stored: ${humanBytes(job.bytesStored)}`,
    job.rpId ? `  recovery point: ${job.rpId}` : '',
    ...job.warnings.map((w) => `  warning: ${w}`),
    job.error ? `  error: ${job.error}` : '',
  ];
  process.stdout.write(`${lines.filter(Boolean).join('\n')}\n`);
}

/** With --wait, the exit code says whether the job succeeded. */
export async function finishJob(
  client: AdminClient,
  job: JobView,
  opts: Opts & { wait?: boolean },
): Promise<void> {
  if (!opts.wait) {
    if (opts.json) printJson(job);
    else process.stdout.write(`queued job ${job.id} (follow it with: holdfast jobs show ${job.id})\n`);
    return;
  }
  const done = await waitForJob(client, job.id, Boolean(opts.json));
  if (opts.json) printJson(done);
  if (done.state !== 'succeeded') {
    if (!opts.json) process.stderr.write(`holdfast: job ${done.id} ${done.state}: ${done.error ?? ''}\n`);
    process.exitCode = 1;
  }
}

export function registerAdminCommands(program: Command): void {
  const tokens = program.command('enroll-token').description('one-time agent enrollment tokens');
  adminCommand(tokens, 'create', 'create a token and print the command to enroll a machine with it')
    .option('--ttl <duration>', 'validity, e.g. 30m, 24h, 7d', '24h')
    .action(async (opts: Opts & { ttl: string }) => {
      const client = await AdminClient.connect(opts);
      const res = await client.post<{
        token: string;
        command: string;
        expiresAt: string;
        fingerprint: string | null;
      }>('/enroll-tokens', { ttl: opts.ttl });
      if (opts.json) printJson(res);
      else
        process.stdout.write(
          `token expires ${res.expiresAt}; on the machine to protect, run:\n\n  ${res.command}\n\n`,
        );
    });

  const agents = program.command('agents').description('enrolled agents');
  adminCommand(agents, 'list', 'list enrolled agents').action(async (opts: Opts) => {
    const rows = await (await AdminClient.connect(opts)).get<Record<string, unknown>[]>('/agents');
    if (opts.json) printJson(rows);
    else printTable(rows, ['name', 'hostname', 'online', 'revoked', 'lastSeenAt', 'id']);
  });
  adminCommand(agents, 'revoke', 'revoke an agent: it can no longer connect')
    .argument('<name>')
    .action(async (name: string, opts: Opts) => {
      const res = await (await AdminClient.connect(opts)).post(`/agents/${encodeURIComponent(name)}/revoke`);
      if (opts.json) printJson(res);
      else process.stdout.write(`agent "${name}" revoked\n`);
    });

  adminCommand(
    agents,
    'throttle',
    "limit an agent's upload bandwidth (takes effect at once, also mid-backup)",
  )
    .argument('<name>')
    .option('--work-hours <rate>', 'bytes/s during work hours, e.g. 10M (0 = unlimited)')
    .option('--non-work-hours <rate>', 'bytes/s outside work hours on work days')
    .option('--weekend <rate>', 'bytes/s on days that are not work days')
    .option('--work-days <days>', 'work days, e.g. mon,tue,wed,thu,fri (default)')
    .option('--work-start <HH:MM>', 'start of work hours, agent local time (default 08:00)')
    .option('--work-end <HH:MM>', 'end of work hours (default 18:00)')
    .option('--off', 'remove the limit')
    .action(async (name: string, opts: Opts & Record<string, string | boolean | undefined>) => {
      const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
      const rate = (v: unknown) => (v === undefined ? undefined : parseSize(String(v)));
      const policy = opts.off
        ? null
        : {
            workHoursBps: rate(opts.workHours),
            nonWorkHoursBps: rate(opts.nonWorkHours),
            weekendBps: rate(opts.weekend),
            workDays: opts.workDays
              ? String(opts.workDays)
                  .split(',')
                  .map((d) => {
                    const i = DAYS.indexOf(d.trim().toLowerCase().slice(0, 3));
                    if (i < 0) throw new Error(`unknown day "${d}" (use mon, tue, ...)`);
                    return i;
                  })
              : undefined,
            workStart: opts.workStart as string | undefined,
            workEnd: opts.workEnd as string | undefined,
          };
      const client = await AdminClient.connect(opts);
      const res = await client.put(`/agents/${encodeURIComponent(name)}/throttle`, policy);
      if (opts.json) printJson(res);
      else process.stdout.write(policy ? `throttle for "${name}" set\n` : `throttle for "${name}" removed\n`);
    });

  const datasource = program.command('datasource').description('protected datasources');
  adminCommand(datasource, 'add', 'protect a folder on an agent; prints the datasource id')
    .requiredOption('--agent <name>', 'agent name')
    .requiredOption('--path <path>', 'absolute path on the agent')
    .option(
      '--kind <kind>',
      '"files" (a folder tree) or "image" (a disk-image file or block device)',
      'files',
    )
    .option(
      '--block-size <bytes>',
      'block size, a power of two from 64K to 4M (default: 1M for an image; 256K, the size content-defined blocks cluster around, for files)',
    )
    .option('--no-compress', 'do not compress blocks on the wire and in the store')
    .option('--pre-script <command>', 'shell command the agent runs before each backup')
    .option('--post-script <command>', 'shell command the agent runs after each backup, also after a failure')
    .action(
      async (
        opts: Opts & {
          agent: string;
          path: string;
          kind: string;
          blockSize?: string;
          compress: boolean;
          preScript?: string;
          postScript?: string;
        },
      ) => {
        const ds = await (await AdminClient.connect(opts)).post<{ id: string }>('/datasources', {
          agent: opts.agent,
          path: opts.path,
          kind: opts.kind,
          blockSize: opts.blockSize === undefined ? undefined : parseSize(opts.blockSize),
          compress: opts.compress,
          preScript: opts.preScript,
          postScript: opts.postScript,
        });
        if (opts.json) printJson(ds);
        else process.stdout.write(`${ds.id}\n`);
      },
    );
  adminCommand(
    program.command('datasources').description('protected datasources'),
    'list',
    'list datasources',
  ).action(async (opts: Opts) => {
    const rows = await (await AdminClient.connect(opts)).get<Record<string, unknown>[]>('/datasources');
    if (opts.json) printJson(rows);
    else printTable(rows, ['id', 'agent', 'kind', 'path']);
  });

  adminCommand(program, 'backup', 'back up a datasource now')
    .requiredOption('--datasource <id>', 'datasource id')
    .option('--full', 'read everything, ignoring the agent checksum cache')
    .option('--wait', 'wait for the job; exit 0 only if it succeeded')
    .action(async (opts: Opts & { datasource: string; full?: boolean; wait?: boolean }) => {
      const client = await AdminClient.connect(opts);
      const job = await client.post<JobView>('/backups', {
        datasourceId: opts.datasource,
        full: Boolean(opts.full),
      });
      await finishJob(client, job, opts);
    });

  const rp = program.command('rp').description('recovery points');
  adminCommand(rp, 'list', 'list recovery points')
    .option('--datasource <id>', 'only this datasource')
    .option('--tier <tier>', 'disk or vault')
    .option('--deleted', 'list soft-deleted vault points instead (restorable until purged)')
    .action(async (opts: Opts & { datasource?: string; tier?: string; deleted?: boolean }) => {
      const q = new URLSearchParams();
      if (opts.datasource) q.set('datasourceId', opts.datasource);
      if (opts.tier) q.set('tier', opts.tier);
      if (opts.deleted) q.set('deleted', 'true');
      const rows = await (await AdminClient.connect(opts)).get<Record<string, unknown>[]>(
        `/recovery-points?${q}`,
      );
      if (opts.json) printJson(rows);
      else if (opts.deleted) printTable(rows, ['id', 'createdAt', 'tier', 'kind', 'deletedAt', 'purgeAfter']);
      else printTable(rows, ['id', 'createdAt', 'tier', 'kind', 'files', 'bytes', 'consistency']);
    });
  adminCommand(
    rp,
    'delete',
    'delete a recovery point: a vault point is soft-deleted (restorable for 14 days), a disk point deleted at once',
  )
    .argument('<id>')
    .action(async (id: string, opts: Opts) => {
      const res = await (await AdminClient.connect(opts)).delete<{
        id: string;
        tier: string;
        outcome: string;
        purgeAfter: string | null;
      }>(`/recovery-points/${encodeURIComponent(id)}`);
      if (opts.json) return printJson(res);
      process.stdout.write(
        res.tier === 'vault'
          ? `vault recovery point ${res.id} ${res.outcome === 'already-deleted' ? 'was already soft-deleted' : 'soft-deleted'}; restorable (rp list --deleted, rp undelete) until ${res.purgeAfter}, then purged\n`
          : `disk recovery point ${res.id} deleted (gc frees its blocks)\n`,
      );
    });
  adminCommand(rp, 'undelete', 'bring a soft-deleted vault recovery point back')
    .argument('<id>')
    .action(async (id: string, opts: Opts) => {
      const res = await (await AdminClient.connect(opts)).post<{ id: string; outcome: string }>(
        `/recovery-points/${encodeURIComponent(id)}/undelete`,
      );
      if (opts.json) return printJson(res);
      process.stdout.write(
        res.outcome === 'undeleted'
          ? `vault recovery point ${res.id} undeleted\n`
          : `vault recovery point ${res.id} was not deleted\n`,
      );
    });
  adminCommand(
    rp,
    'purge',
    'remove a vault recovery point for good now, then prune the vault (a disk point: deleted at once)',
  )
    .argument('<id>')
    .action(async (id: string, opts: Opts) => {
      const client = await AdminClient.connect(opts);
      const res = await client.post<{ job?: JobView; deleted?: { id: string } }>(
        `/recovery-points/${encodeURIComponent(id)}/purge`,
      );
      if (!res.job) {
        if (opts.json) return printJson(res);
        process.stdout.write(`disk recovery point ${res.deleted?.id ?? id} deleted (gc frees its blocks)\n`);
        return;
      }
      const { printRetentionReport } = await import('./vault.ts');
      const report = await serverJobResult<
        import('../../server/vault/vault-maintenance.ts').VaultRetentionReport
      >(client, res.job);
      if (opts.json) return printJson(report);
      if (report.notFound.length > 0) {
        process.stderr.write(`holdfast: recovery point ${id} is not in the vault\n`);
        process.exitCode = 1;
      }
      printRetentionReport(report);
    });

  adminCommand(program, 'restore', 'restore a recovery point (or some paths of it) into a folder on an agent')
    .requiredOption('--rp <id>', 'recovery point id')
    .requiredOption('--target <dir>', 'absolute folder on the target agent')
    .option('--agent <name>', 'target agent (default: the agent the data came from)')
    .option(
      '--path <path>',
      'restore only this path (repeatable)',
      (v: string, acc: string[]) => [...acc, v],
      [],
    )
    .option('--wait', 'wait for the job; exit 0 only if it succeeded')
    .action(
      async (opts: Opts & { rp: string; target: string; agent?: string; path: string[]; wait?: boolean }) => {
        const client = await AdminClient.connect(opts);
        const job = await client.post<JobView>('/restores', {
          rpId: opts.rp,
          target: opts.target,
          agent: opts.agent,
          paths: opts.path,
        });
        await finishJob(client, job, opts);
      },
    );

  const jobs = program.command('jobs').description('backup and restore jobs');
  adminCommand(jobs, 'list', 'list recent jobs, then the next scheduled runs').action(async (opts: Opts) => {
    const client = await AdminClient.connect(opts);
    const rows = await client.get<JobView[]>('/jobs');
    if (opts.json) printJson(rows);
    else {
      printTable(rows, ['id', 'type', 'state', 'agent', 'createdAt', 'files', 'error']);
      // What the groups' schedules will queue next (all of it: holdfast schedule list).
      const upcoming = await client.get<Record<string, unknown>[]>('/schedule/upcoming?limit=10');
      if (upcoming.length > 0) {
        process.stdout.write('\nscheduled next:\n');
        printTable(upcoming, ['at', 'kind', 'group', 'agent', 'path']);
      }
    }
  });
  adminCommand(jobs, 'show', 'show one job, with live progress while it runs')
    .argument('<id>')
    .option('--watch', 'refresh every second until the job ends')
    .action(async (id: string, opts: Opts & { watch?: boolean }) => {
      const client = await AdminClient.connect(opts);
      let job = await client.get<JobView>(`/jobs/${encodeURIComponent(id)}`);
      while (opts.watch && !opts.json && !TERMINAL_STATES.has(job.state)) {
        printJob(job);
        await new Promise((r) => setTimeout(r, 1000));
        job = await client.get<JobView>(`/jobs/${encodeURIComponent(id)}`);
      }
      if (opts.json) printJson(job);
      else printJob(job);
    });
}
