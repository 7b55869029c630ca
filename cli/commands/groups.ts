import { readFile, writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import type { ApplyResult } from '../../server/groups/apply.ts';
import type { GroupView } from '../../server/groups/group-rows.ts';
import type { DeleteResult, GroupChangeResult } from '../../server/groups/group-service.ts';
import { AdminClient, type AdminOptions } from '../admin-client.ts';
import { printJson, printTable } from '../output.ts';
import { adminCommand } from './admin.ts';

/*
 * `holdfast group create|update|delete|list|show`, `holdfast apply -f FILE` and
 * `holdfast export`. Options map onto the policy fields of the groups file (docs/groups.md);
 * the server checks them and names the field of any bad value.
 */

type Opts = AdminOptions & { json?: boolean };

interface PolicyOpts {
  retentionDays?: string;
  syncEvery?: string;
  rpDays?: string;
  rpTimes?: string;
  expressFullDays?: string;
  expressFullTimes?: string;
  /** false with --no-express-full. */
  expressFull?: boolean;
  consistency?: string;
  consistencyStart?: string;
  consistencyMaxHours?: string;
  online?: boolean;
  onlineDaily?: string;
  onlineWeeklyDays?: string;
  onlineWeeklyTimes?: string;
  onlineRetentionDaily?: string;
  onlineRetentionWeekly?: string;
  onlineRetentionMonthly?: string;
  onlineRetentionYearly?: string;
}
type GroupOpts = Opts &
  PolicyOpts & { member?: string[]; addMember?: string[]; removeMember?: string[]; keepData?: boolean };

const repeat = (v: string, acc: string[] | undefined) => [...(acc ?? []), v];
const list = (v: string) =>
  v
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
/** A number when it looks like one; otherwise the text, for the server to name in its error. */
const num = (v: string): number | string => (/^-?\d+(\.\d+)?$/.test(v.trim()) ? Number(v) : v);

/** "agent:path[:kind]" -> { agent, path, kind }; paths may hold colons. */
export function parseMember(text: string): { agent: string; path: string; kind?: string } {
  const i = text.indexOf(':');
  if (i <= 0 || i === text.length - 1)
    throw new Error(`member must be AGENT:PATH[:KIND], e.g. web1:/srv/www:files, got "${text}"`);
  const agent = text.slice(0, i);
  const rest = text.slice(i + 1);
  const m = /^(.*):(files|image)$/.exec(rest);
  return m ? { agent, path: m[1]!, kind: m[2]! } : { agent, path: rest };
}

/** The policy fields the options name, nested as in the groups file; only those given. */
export function policyFromOptions(o: PolicyOpts): {
  disk?: Record<string, unknown>;
  online?: Record<string, unknown>;
} {
  const disk: Record<string, unknown> = {};
  if (o.retentionDays !== undefined) disk.retentionDays = num(o.retentionDays);
  if (o.syncEvery !== undefined) disk.syncEvery = o.syncEvery;
  if (o.rpDays !== undefined || o.rpTimes !== undefined)
    disk.recoveryPoints = {
      ...(o.rpDays !== undefined ? { days: list(o.rpDays) } : {}),
      ...(o.rpTimes !== undefined ? { times: list(o.rpTimes) } : {}),
    };
  if (o.expressFull === false) disk.expressFull = null;
  else if (o.expressFullDays !== undefined || o.expressFullTimes !== undefined)
    disk.expressFull = {
      ...(o.expressFullDays !== undefined ? { days: list(o.expressFullDays) } : {}),
      ...(o.expressFullTimes !== undefined ? { times: list(o.expressFullTimes) } : {}),
    };
  if (o.consistency !== undefined || o.consistencyStart !== undefined || o.consistencyMaxHours !== undefined)
    disk.consistencyCheck = {
      ...(o.consistency !== undefined ? { when: o.consistency } : {}),
      ...(o.consistencyStart !== undefined ? { start: o.consistencyStart } : {}),
      ...(o.consistencyMaxHours !== undefined ? { maxHours: num(o.consistencyMaxHours) } : {}),
    };

  const online: Record<string, unknown> = {};
  const weekly = o.onlineWeeklyDays !== undefined || o.onlineWeeklyTimes !== undefined;
  if (o.onlineDaily !== undefined && weekly)
    throw new Error('give either --online-daily or --online-weekly-days/--online-weekly-times, not both');
  if (o.onlineDaily !== undefined) online.schedule = { daily: list(o.onlineDaily) };
  if (weekly)
    online.schedule = {
      weekly: {
        ...(o.onlineWeeklyDays !== undefined ? { days: list(o.onlineWeeklyDays) } : {}),
        ...(o.onlineWeeklyTimes !== undefined ? { times: list(o.onlineWeeklyTimes) } : {}),
      },
    };
  const retention: Record<string, unknown> = {};
  for (const k of ['daily', 'weekly', 'monthly', 'yearly'] as const) {
    const v = o[`onlineRetention${k[0]!.toUpperCase()}${k.slice(1)}` as keyof PolicyOpts];
    if (typeof v === 'string') retention[k] = num(v);
  }
  if (Object.keys(retention).length > 0) online.retention = retention;
  // A schedule means online protection is wanted, unless --no-online says otherwise.
  if (o.online !== undefined) online.enabled = o.online;
  else if (online.schedule) online.enabled = true;

  return {
    ...(Object.keys(disk).length > 0 ? { disk } : {}),
    ...(Object.keys(online).length > 0 ? { online } : {}),
  };
}

function policyOptions(cmd: Command): Command {
  return cmd
    .option('--retention-days <n>', 'keep recovery points on disk this many days (1..448)')
    .option('--sync-every <duration>', 'sync between recovery points: 15m..24h, or rp-only')
    .option('--rp-days <days>', 'recovery-point days, e.g. mon,tue,wed,thu,fri')
    .option('--rp-times <times>', 'recovery-point times (server local time), e.g. 08:00,12:00,20:00')
    .option('--express-full-days <days>', 'express full backup days, e.g. sat')
    .option('--express-full-times <times>', 'express full backup times, e.g. 22:00')
    .option('--no-express-full', 'no express full backups')
    .option('--consistency <when>', 'consistency check: needed (only when found inconsistent) or daily')
    .option('--consistency-start <HH:MM>', 'start of the daily consistency check window')
    .option('--consistency-max-hours <n>', 'length of that window in hours (1..24)')
    .option('--online', 'protect online (the vault)')
    .option('--no-online', 'no online protection')
    .option('--online-daily <times>', 'online backups every day at these times (at most 2), e.g. 21:00')
    .option('--online-weekly-days <days>', 'online backups on these days, e.g. sat')
    .option('--online-weekly-times <times>', 'at these times (at most 2), e.g. 21:00')
    .option('--online-retention-daily <n>', 'online daily points kept')
    .option('--online-retention-weekly <n>', 'online weekly points kept')
    .option('--online-retention-monthly <n>', 'online monthly points kept')
    .option('--online-retention-yearly <n>', 'online yearly points kept');
}

const route = (name: string) => `/groups/${encodeURIComponent(name)}`;

/*
 * The formatting helpers are loaded when used: they pull in the server's group code, which the
 * agent (same entry point) should not carry in memory.
 */
async function printChanges(r: GroupChangeResult, verb: string): Promise<void> {
  const { describeChange } = await import('../../server/groups/plan-format.ts');
  if (r.changes.length === 0) {
    process.stdout.write(`group "${r.group.name}": no changes\n`);
    return;
  }
  for (const c of r.changes) process.stdout.write(`  ${describeChange(c)}\n`);
  process.stdout.write(`group "${r.group.name}" ${verb}\n`);
}

async function printGroup(g: GroupView): Promise<void> {
  const { groupsToYaml } = await import('../../server/groups/yaml-config.ts');
  process.stdout.write(groupsToYaml([g], { header: false }));
  if (g.members.length > 0) {
    process.stdout.write('\n');
    printTable(g.members, ['agent', 'path', 'kind', 'datasourceId']);
  }
}

const summary = (g: GroupView) => ({
  name: g.name,
  members: g.members.length,
  retentionDays: g.disk.retentionDays,
  syncEvery: g.disk.syncEvery,
  recoveryPoints: `${g.disk.recoveryPoints.days.join(',')} ${g.disk.recoveryPoints.times.join(',')}`,
  online: !g.online.enabled
    ? 'off'
    : g.online.schedule && 'daily' in g.online.schedule
      ? `daily ${g.online.schedule.daily.join(',')}`
      : g.online.schedule
        ? `${g.online.schedule.weekly.days.join(',')} ${g.online.schedule.weekly.times.join(',')}`
        : 'on',
});

export function registerGroupCommands(program: Command): void {
  const group = program.command('group').description('protection groups: datasources sharing one policy');

  policyOptions(adminCommand(group, 'create', 'create a protection group'))
    .argument('<name>')
    .option('--member <agent:path[:kind]>', 'a member (repeatable); a missing datasource is created', repeat)
    .action(async (name: string, opts: GroupOpts) => {
      const body = { name, members: (opts.member ?? []).map(parseMember), ...policyFromOptions(opts) };
      const r = await (await AdminClient.connect(opts)).post<GroupChangeResult>('/groups', body);
      if (opts.json) printJson(r);
      else await printChanges(r, 'created');
    });

  policyOptions(adminCommand(group, 'update', 'change some fields or members of a group'))
    .argument('<name>')
    .option('--member <agent:path[:kind]>', 'replace the member list with these (repeatable)', repeat)
    .option('--add-member <agent:path[:kind]>', 'add a member (repeatable)', repeat)
    .option('--remove-member <agent:path>', 'remove a member; its recovery points stay (repeatable)', repeat)
    .action(async (name: string, opts: GroupOpts) => {
      const body = {
        ...policyFromOptions(opts),
        ...(opts.member ? { members: opts.member.map(parseMember) } : {}),
        ...(opts.addMember ? { addMembers: opts.addMember.map(parseMember) } : {}),
        ...(opts.removeMember ? { removeMembers: opts.removeMember.map(parseMember) } : {}),
      };
      const r = await (await AdminClient.connect(opts)).patch<GroupChangeResult>(route(name), body);
      if (opts.json) printJson(r);
      else await printChanges(r, 'updated');
    });

  adminCommand(group, 'delete', "delete a group and, unless --keep-data, its members' disk recovery points")
    .argument('<name>')
    .option('--keep-data', 'keep the recovery points (the datasources leave the group either way)')
    .action(async (name: string, opts: GroupOpts) => {
      const r = await (await AdminClient.connect(opts)).delete<DeleteResult>(
        `${route(name)}?keepData=${opts.keepData ? 'true' : 'false'}`,
      );
      if (opts.json) printJson(r);
      else
        process.stdout.write(
          `group "${r.name}" deleted; ${r.members.length} datasource(s) left it; ` +
            (r.keptData
              ? 'their recovery points were kept\n'
              : `${r.deletedRecoveryPoints.length} disk recovery point(s) deleted\n`),
        );
    });

  adminCommand(group, 'list', 'list protection groups').action(async (opts: Opts) => {
    const rows = await (await AdminClient.connect(opts)).get<GroupView[]>('/groups');
    if (opts.json) printJson(rows);
    else
      printTable(rows.map(summary), [
        'name',
        'members',
        'retentionDays',
        'syncEvery',
        'recoveryPoints',
        'online',
      ]);
  });

  adminCommand(group, 'show', 'show one group, in the groups-file format')
    .argument('<name>')
    .action(async (name: string, opts: Opts) => {
      const g = await (await AdminClient.connect(opts)).get<GroupView>(route(name));
      if (opts.json) printJson(g);
      else await printGroup(g);
    });

  adminCommand(program, 'apply', 'make the groups listed in a YAML file what the file says')
    .requiredOption('-f, --file <file>', 'the groups file (docs/groups.md)')
    .option('--dry-run', 'print the plan; change nothing')
    .action(async (opts: Opts & { file: string; dryRun?: boolean }) => {
      let yaml: string;
      try {
        yaml = await readFile(opts.file, 'utf8');
      } catch (err) {
        throw new Error(`cannot read ${opts.file}: ${(err as Error).message}`);
      }
      const client = await AdminClient.connect(opts);
      let r: ApplyResult;
      try {
        r = await client.post<ApplyResult>('/config/apply', { yaml, dryRun: Boolean(opts.dryRun) });
      } catch (err) {
        // Name the file: the server only saw its text.
        throw new Error(`${opts.file}: ${(err as Error).message}`);
      }
      if (opts.json) printJson(r);
      else process.stdout.write((await import('../../server/groups/plan-format.ts')).formatApplyResult(r));
    });

  adminCommand(program, 'export', 'write all protection groups in the groups-file format')
    .option('-o, --output <file>', 'write to this file instead of standard output')
    .action(async (opts: Opts & { output?: string }) => {
      const r = await (await AdminClient.connect(opts)).get<{ yaml: string }>('/config/export');
      if (opts.json) printJson(r);
      else if (opts.output) await writeFile(opts.output, r.yaml);
      else process.stdout.write(r.yaml);
    });
}
