import type { Command } from 'commander';
import type { AlertView } from '../../server/alerts/alerts.ts';
import type { UpcomingRun } from '../../server/scheduler/upcoming.ts';
import { AdminClient, type AdminOptions } from '../admin-client.ts';
import { printJson, printTable } from '../output.ts';
import { adminCommand } from './admin.ts';

/*
 * `holdfast alerts list [--all]`: what needs an operator's attention (active alerts; with --all
 * also resolved ones), and `holdfast schedule list`: the scheduled work to come.
 */

type Opts = AdminOptions & { json?: boolean };

export function registerAlertCommands(program: Command): void {
  const alerts = program
    .command('alerts')
    .description('alerts: failed backups, missed RPOs, unreachable agents, full store');
  adminCommand(alerts, 'list', 'list active alerts, most recent first')
    .option('--all', 'also list resolved alerts')
    .action(async (opts: Opts & { all?: boolean }) => {
      const rows = await (await AdminClient.connect(opts)).get<AlertView[]>(
        `/alerts${opts.all ? '?all=1' : ''}`,
      );
      if (opts.json) printJson(rows);
      else
        printTable(
          rows.map((a) => ({ ...a, resolvedAt: a.resolvedAt ?? '' })),
          opts.all
            ? ['severity', 'kind', 'state', 'subject', 'raisedAt', 'resolvedAt', 'message']
            : ['severity', 'kind', 'subject', 'raisedAt', 'message'],
        );
    });

  const schedule = program.command('schedule').description('scheduled work of protection groups');
  adminCommand(schedule, 'list', 'the next scheduled run of each protected datasource, soonest first')
    .option('--limit <n>', 'at most this many runs', '20')
    .action(async (opts: Opts & { limit: string }) => {
      const rows = await (await AdminClient.connect(opts)).get<UpcomingRun[]>(
        `/schedule/upcoming?limit=${encodeURIComponent(opts.limit)}`,
      );
      if (opts.json) printJson(rows);
      else printTable(rows as unknown as Record<string, unknown>[], ['at', 'kind', 'group', 'agent', 'path']);
    });
}
