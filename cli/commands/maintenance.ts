import type { Command } from 'commander';
import { parseDuration } from '../../lib/duration.ts';
import type { GcReport } from '../../server/gc/gc.ts';
import type { VerifyReport } from '../../server/verify/verify.ts';
import { AdminClient, type AdminOptions } from '../admin-client.ts';
import { serverJobResult } from '../job-wait.ts';
import { humanBytes, printJson, printTable } from '../output.ts';
import type { JobView } from '../../server/jobs/job-repo.ts';
import { adminCommand, finishJob } from './admin.ts';

type Opts = AdminOptions & { json?: boolean };

/** Queues a server job (it shows in `jobs list` like any other) and returns its report. */
async function runServerJob<T>(client: AdminClient, body: object): Promise<T> {
  return serverJobResult<T>(client, await client.post<JobView>('/jobs', body));
}

/** `holdfast gc`, `holdfast verify`, `holdfast consistency-check`: store maintenance as jobs. */
export function registerMaintenanceCommands(program: Command): void {
  adminCommand(program, 'gc', 'garbage-collect the disk chunk store now: free blocks no recovery point names')
    .option(
      '--grace <duration>',
      "keep blocks touched this recently, e.g. 1h (default: the server's --gc-grace)",
    )
    .option('--dry-run', 'only report what would be freed')
    .action(async (opts: Opts & { grace?: string; dryRun?: boolean }) => {
      const client = await AdminClient.connect(opts);
      const report = await runServerJob<GcReport>(client, {
        type: 'gc',
        ...(opts.grace !== undefined ? { graceMs: parseDuration(opts.grace) } : {}),
        dryRun: Boolean(opts.dryRun),
      });
      if (opts.json) return printJson(report);
      const would = report.dryRun ? ' (dry run: nothing was changed)' : '';
      process.stdout.write(
        [
          `garbage collection${would}: ${report.durationMs} ms, cut-off ${report.cutoff} (grace ${Math.round(report.graceMs / 1000)} s)`,
          `  marked: ${report.referencedBlocks} blocks named by ${report.recoveryPointsMarked} recovery points`,
          `  freed: ${report.chunksFreed} blocks, ${humanBytes(report.bytesFreed)} stored`,
          `  packs: ${report.packsDeleted} deleted, ${report.packsRewritten} rewritten (${report.blocksMoved} blocks, ${humanBytes(report.bytesMoved)} moved), ${report.packsSkippedRecent} too recent to touch${report.packsSkippedDamaged ? `, ${report.packsSkippedDamaged} with damaged blocks left alone (run holdfast verify)` : ''}`,
          `  disk space reclaimed: ${humanBytes(report.packBytesReclaimed)}${report.packsRewritten ? ' (rewritten packs wait in the trash until the next run)' : ''}`,
          `  trash emptied: ${report.trashEmptied} packs, ${humanBytes(report.trashBytesFreed)}`,
          `  orphan manifests removed: ${report.orphanManifestsRemoved}`,
        ].join('\n') + '\n',
      );
    });

  adminCommand(
    program,
    'verify',
    're-read and re-hash the blocks of recovery points; quarantine damaged ones',
  )
    .option(
      '--rp <id>',
      'a recovery point to verify (repeatable; default: every disk recovery point)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .action(async (opts: Opts & { rp?: string[] }) => {
      const client = await AdminClient.connect(opts);
      const report = await runServerJob<VerifyReport>(client, {
        type: 'verify',
        ...(opts.rp ? { rpIds: opts.rp } : {}),
      });
      if (opts.json) printJson(report);
      else {
        process.stdout.write(
          `verified ${report.rpsChecked} recovery points: ${report.blocksChecked} blocks, ${humanBytes(report.bytesChecked)} in ${report.durationMs} ms\n`,
        );
        if (report.healedRps.length > 0)
          process.stdout.write(`healed (ok again): ${report.healedRps.join(', ')}\n`);
        if (report.corruptBlocks.length === 0) process.stdout.write('no damaged or missing blocks\n');
        else {
          process.stdout.write(
            `\n${report.corruptBlocks.length} damaged or missing blocks (${report.quarantined} quarantined now; the next backup sends them again):\n`,
          );
          printTable(
            report.corruptBlocks.slice(0, 50).map((b) => ({ ...b })),
            ['hash', 'pack', 'reason'],
          );
          process.stdout.write(`\ncorrupt recovery points:\n`);
          printTable(
            report.corruptRps.map((r) => ({ ...r })),
            ['id', 'datasourceId', 'reason'],
          );
          if (report.inconsistentDatasources.length > 0)
            process.stdout.write(
              `\ninconsistent replicas (run a consistency check): ${report.inconsistentDatasources.join(', ')}\n`,
            );
        }
      }
      // Damage found is a failed check, for scripts.
      if (report.corruptBlocks.length > 0 || report.corruptRps.length > 0) process.exitCode = 1;
    });

  adminCommand(
    program,
    'consistency-check',
    "compare the server's newest copy of a datasource with the agent's data and repair the difference",
  )
    .requiredOption('--datasource <id>', 'the datasource to check')
    .option('--wait', 'follow the job to its end; exit 0 only if it succeeded')
    .action(async (opts: Opts & { datasource: string; wait?: boolean }) => {
      const client = await AdminClient.connect(opts);
      const job = await client.post<JobView>('/jobs', {
        type: 'consistency-check',
        datasourceId: opts.datasource,
      });
      await finishJob(client, job, opts);
    });
}
