import path from 'node:path';
import type { Command } from 'commander';
import type { JobView } from '../../server/jobs/job-repo.ts';
import type { VaultCheckJobReport, VaultRetentionReport } from '../../server/vault/vault-maintenance.ts';
import { serverJobResult } from '../job-wait.ts';
import { AdminClient, type AdminOptions } from '../admin-client.ts';
import { humanBytes, printJson } from '../output.ts';
import { adminCommand, finishJob } from './admin.ts';

type Opts = AdminOptions & { json?: boolean };
type SetupOpts = Opts & {
  backend: string;
  path?: string;
  passphraseFile: string;
  container?: string;
  connectionStringFile?: string;
  endpoint?: string;
  bucket?: string;
  region?: string;
  credentialsFile?: string;
  prefix?: string;
};

/** Attaching rebuilds the mirror and catalog before answering: give it time. */
const SETUP_TIMEOUT_MS = 30 * 60_000;

function backendOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--passphrase-file <file>', 'file holding the vault passphrase (at least 16 characters)')
    .option('--backend <type>', 'local, azure or s3', 'local')
    .option('--path <dir>', "local: the vault folder (default: the server's DATA/vault)")
    .option('--container <name>', 'azure: the blob container')
    .option('--connection-string-file <file>', 'azure: file holding the storage connection string')
    .option('--endpoint <url>', 's3: the endpoint URL')
    .option('--bucket <name>', 's3: the bucket')
    .option('--region <region>', 's3: the region')
    .option('--credentials-file <file>', 's3: file holding the access keys')
    .option('--prefix <prefix>', 'azure/s3: a folder inside the container or bucket');
}

/** Paths are made absolute here: the server reads them (it runs on this machine). */
function setupBody(opts: SetupOpts) {
  const abs = (p: string | undefined) => (p === undefined ? undefined : path.resolve(p));
  const need = (v: string | undefined, flag: string) => {
    if (!v) throw new Error(`--backend ${opts.backend} needs ${flag}`);
    return v;
  };
  let backend: Record<string, unknown>;
  if (opts.backend === 'local') backend = { type: 'local', ...(opts.path ? { path: abs(opts.path) } : {}) };
  else if (opts.backend === 'azure')
    backend = {
      type: 'azure',
      container: need(opts.container, '--container'),
      connectionStringFile: abs(need(opts.connectionStringFile, '--connection-string-file')),
      ...(opts.prefix ? { prefix: opts.prefix } : {}),
    };
  else if (opts.backend === 's3')
    backend = {
      type: 's3',
      endpoint: need(opts.endpoint, '--endpoint'),
      bucket: need(opts.bucket, '--bucket'),
      credentialsFile: abs(need(opts.credentialsFile, '--credentials-file')),
      ...(opts.region ? { region: opts.region } : {}),
      ...(opts.prefix ? { prefix: opts.prefix } : {}),
    };
  else throw new Error(`--backend must be local, azure or s3, got "${opts.backend}"`);
  return { backend, passphraseFile: abs(opts.passphraseFile) };
}

const rpName = (p: { rpId: string | null; snapshotId: string }) =>
  p.rpId ?? `snapshot ${p.snapshotId.slice(0, 8)}`;

/** The report of a vault-retention job (holdfast vault prune, holdfast rp purge). */
export function printRetentionReport(r: VaultRetentionReport): void {
  const would = r.dryRun ? ' (dry run: nothing was changed)' : '';
  const lines = [
    `vault retention and prune${would}: ${r.snapshots} snapshots, ${r.kept} kept (${r.keptWithoutPolicy} without an online retention policy)`,
    ...Object.entries(r.policies).map(
      ([g, p]) =>
        `  group ${g}: daily ${p.daily}, weekly ${p.weekly}, monthly ${p.monthly}, yearly ${p.yearly}`,
    ),
    `  soft-deleted${r.dryRun ? ' (would be)' : ''}: ${r.softDeleted.length}`,
    ...r.softDeleted.map((p) => `    ${rpName(p)}  ${p.time}${p.group ? `  group ${p.group}` : ''}`),
    `  purged${r.dryRun ? ' (would be)' : ''}: ${r.purged.length}`,
    ...r.purged.map((p) => `    ${rpName(p)}  ${p.time}  (${p.reason})`),
    r.awaitingPurge.length ? `  soft-deleted, restorable until purged: ${r.awaitingPurge.length}` : '',
    ...r.awaitingPurge.map((p) => `    ${p.rpId ?? p.snapshotId.slice(0, 8)}  purge after ${p.purgeAfter}`),
    r.notFound.length ? `  not in the vault: ${r.notFound.join(', ')}` : '',
    `  prune${r.prune.dryRun ? ' (would)' : ''}: ${r.prune.packsDeleted} packs deleted, ${r.prune.packsRewritten} rewritten into ${r.prune.packsWritten}, ${r.prune.unreferencedPacksDeleted} unreferenced deleted; ${r.prune.blobsRemoved} blobs removed`,
    `  freed: ${humanBytes(Math.max(0, r.prune.bytesFreed))} (of ${humanBytes(r.prune.bytesBefore)}); unused kept in packs: ${humanBytes(r.prune.unusedBytesKept)}`,
    r.catalog.updated || r.catalog.removed.length
      ? `  catalog: ${r.catalog.updated} points updated, ${r.catalog.removed.length} removed (their snapshots were gone)`
      : '',
  ];
  process.stdout.write(`${lines.filter(Boolean).join('\n')}\n`);
}

/** `holdfast vault create|attach|status|check|prune` and `holdfast online-backup`. */
export function registerVaultCommands(program: Command): void {
  const vault = program.command('vault').description('the long-term vault (a restic repository)');

  backendOptions(adminCommand(vault, 'create', 'create a new vault and use it')).action(
    async (opts: SetupOpts) => {
      const client = await AdminClient.connect(opts);
      const res = await client.post<{ id: string; repositoryId: string; backend: { type: string } }>(
        '/vault/create',
        setupBody(opts),
        { timeoutMs: SETUP_TIMEOUT_MS },
      );
      if (opts.json) return printJson(res);
      process.stdout.write(
        `vault created (${res.backend.type}, repository ${res.repositoryId.slice(0, 8)})\n`,
      );
    },
  );

  backendOptions(
    adminCommand(
      vault,
      'attach',
      "use an existing vault: check the passphrase, rebuild the server's index and catalog from it",
    ),
  ).action(async (opts: SetupOpts) => {
    const client = await AdminClient.connect(opts);
    const res = await client.post<{
      packs: number;
      blobs: number;
      snapshots: number;
      recoveryPointsAdded: number;
      agentsAdded: string[];
      datasourcesAdded: number;
      foreignSnapshots: number;
    }>('/vault/attach', setupBody(opts), { timeoutMs: SETUP_TIMEOUT_MS });
    if (opts.json) return printJson(res);
    process.stdout.write(
      [
        `vault attached: ${res.packs} packs, ${res.blobs} blobs, ${res.snapshots} snapshots`,
        `  recovery points added: ${res.recoveryPointsAdded}, datasources added: ${res.datasourcesAdded}`,
        res.agentsAdded.length
          ? `  agents added (not enrolled; restore to an enrolled agent with --agent): ${res.agentsAdded.join(', ')}`
          : '',
        res.foreignSnapshots ? `  snapshots made by restic itself (not listed): ${res.foreignSnapshots}` : '',
      ]
        .filter(Boolean)
        .join('\n') + '\n',
    );
  });

  adminCommand(vault, 'status', 'sizes, packs, snapshots and the last online backup').action(
    async (opts: Opts) => {
      const client = await AdminClient.connect(opts);
      // biome-ignore lint/suspicious/noExplicitAny: the server's status shape, printed as is
      const s = await client.get<any>('/vault');
      if (opts.json) return printJson(s);
      if (!s.configured) {
        process.stdout.write('no vault is configured (holdfast vault create / vault attach)\n');
        return;
      }
      process.stdout.write(
        [
          `vault ${s.vault.name}: ${s.vault.backend.type} ${s.vault.backend.path ?? s.vault.backend.container ?? s.vault.backend.bucket ?? ''} (repository ${s.vault.repositoryId.slice(0, 8)})`,
          `  stored: ${humanBytes(s.storedBytes)} in ${s.packs} packs`,
          `  data: ${humanBytes(s.deduplicatedBytes)} deduplicated, ${humanBytes(s.compressedBytes)} compressed; recovery points hold ${humanBytes(s.logicalBytes)}`,
          `  recovery points: ${s.recoveryPoints}, snapshots: ${s.snapshots ?? '?'}`,
          s.lastOnlineJob
            ? `  last online backup: job ${s.lastOnlineJob.id} ${s.lastOnlineJob.state} (${s.lastOnlineJob.finishedAt ?? s.lastOnlineJob.createdAt})${s.lastOnlineJob.error ? `: ${s.lastOnlineJob.error}` : ''}`
            : '  last online backup: none',
        ].join('\n') + '\n',
      );
    },
  );

  adminCommand(
    vault,
    'check',
    'check the vault (as restic check): exit 1 on errors, naming the recovery points they affect',
  )
    .option('--read-data', 'also read every pack and check every blob (reads the whole vault)')
    .action(async (opts: Opts & { readData?: boolean }) => {
      const client = await AdminClient.connect(opts);
      const job = await client.post<JobView>('/vault/check', { readData: Boolean(opts.readData) });
      const r = await serverJobResult<VaultCheckJobReport>(client, job);
      if (!r.ok) process.exitCode = 1;
      if (opts.json) return printJson(r);
      const lines = [
        `vault check${r.readData ? ' --read-data' : ''}: ${r.ok ? 'no errors' : `${r.errors.length} error(s)`} (${r.stats.snapshots} snapshots, ${r.stats.packs} packs, ${r.stats.packsRead} read)`,
        ...r.errors.map(
          (e) =>
            `  error ${e.kind}: ${e.message}${e.recoveryPointIds.length ? `\n    affects recovery points: ${e.recoveryPointIds.map((x) => x ?? '(foreign snapshot)').join(', ')}` : ''}`,
        ),
        r.affectedRecoveryPoints.length ? 'affected recovery points:' : '',
        ...r.affectedRecoveryPoints.map(
          (a) =>
            `  ${a.rpId ?? '(no recovery point)'}  ${a.time}  ${a.hostname ?? ''}:${a.paths.join(',')}  snapshot ${a.snapshotId.slice(0, 8)}${a.softDeleted ? '  (soft-deleted)' : ''}${a.inCatalog ? '' : '  (not in the catalog)'}`,
        ),
        ...r.warnings.map((w) => `  warning: ${w}`),
      ];
      process.stdout.write(`${lines.filter(Boolean).join('\n')}\n`);
    });

  adminCommand(
    vault,
    'prune',
    "apply the groups' online retention (soft delete), purge expired soft deletes, then free unused space",
  )
    .option('--dry-run', 'only report what would be soft-deleted, purged and freed')
    .option('--no-retention', 'only prune (no soft deletes, no purges)')
    .action(async (opts: Opts & { dryRun?: boolean; retention: boolean }) => {
      const client = await AdminClient.connect(opts);
      const job = await client.post<JobView>('/vault/prune', {
        dryRun: Boolean(opts.dryRun),
        retention: opts.retention !== false,
      });
      const r = await serverJobResult<VaultRetentionReport>(client, job);
      if (opts.json) return printJson(r);
      printRetentionReport(r);
    });

  adminCommand(
    program,
    'online-backup',
    "copy the newest disk recovery point of a group's datasources to the vault",
  )
    .option('--group <name>', 'the protection group')
    .option(
      '--datasource <id>',
      'a datasource (repeatable), instead of a group',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--wait', 'follow the job to its end; exit 0 only if it succeeded')
    .action(async (opts: Opts & { group?: string; datasource?: string[]; wait?: boolean }) => {
      if (!opts.group && !opts.datasource?.length) throw new Error('name --group or --datasource');
      const client = await AdminClient.connect(opts);
      const job = await client.post<JobView>('/online-backups', {
        ...(opts.group ? { group: opts.group } : {}),
        ...(opts.datasource?.length ? { datasourceIds: opts.datasource } : {}),
      });
      await finishJob(client, job, opts);
    });
}
