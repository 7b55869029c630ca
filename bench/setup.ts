import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { peerVersion } from './peers.ts';
import { type DataKind, TOOL_NAMES, type ToolName } from './tool.ts';

/** Command-line options, prerequisites and the machine description of a bench run. */

export const repoRoot = fileURLToPath(new URL('..', import.meta.url));
export const sharedDir = path.resolve(repoRoot, '..', 'shared', 'bench');

export type BenchOptions = ReturnType<typeof options>;

export function options() {
  const { values } = parseArgs({
    options: {
      scale: { type: 'string', default: '1' },
      out: { type: 'string', default: './bench-data' },
      only: { type: 'string' },
      tools: { type: 'string', default: TOOL_NAMES.join(',') },
      'image-block-size': { type: 'string', default: '65536' },
      keep: { type: 'boolean', default: false },
      'database-url': { type: 'string' },
      'no-vault': { type: 'boolean', default: false },
      'vault-workers': { type: 'string', default: '' },
      'vault-repeat': { type: 'string', default: '3' },
      'cpu-prof': { type: 'string' },
    },
  });
  const scale = Number(values.scale);
  if (!(scale > 0)) throw new Error(`--scale must be a positive number, got "${values.scale}"`);
  const blockSize = Number(values['image-block-size']);
  if (!Number.isInteger(blockSize) || blockSize <= 0)
    throw new Error('--image-block-size must be a positive integer');
  if (values.only !== undefined && values.only !== 'files' && values.only !== 'image') {
    throw new Error(`--only must be "files" or "image", got "${values.only}"`);
  }
  const tools = values.tools
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean);
  for (const t of tools) {
    if (!(TOOL_NAMES as readonly string[]).includes(t))
      throw new Error(`unknown tool "${t}" (known: ${TOOL_NAMES.join(', ')})`);
  }
  const vaultWorkers = values['vault-workers']
    .split(',')
    .map((t) => t.trim())
    .filter(Boolean)
    .map(Number);
  for (const n of vaultWorkers) {
    if (n !== 1 && n !== 2) throw new Error('--vault-workers takes 1, 2 or 1,2');
  }
  const vaultRepeat = Number(values['vault-repeat']);
  if (!Number.isInteger(vaultRepeat) || vaultRepeat < 1 || vaultRepeat > 9)
    throw new Error('--vault-repeat takes a whole number from 1 to 9');
  const kinds: DataKind[] = values.only ? [values.only as DataKind] : ['files', 'image'];
  return {
    scale,
    out: path.resolve(values.out),
    kinds,
    tools: tools as ToolName[],
    blockSize,
    keep: values.keep,
    /** The online-backup step (Holdfast, files): on unless --no-vault. */
    vault: !values['no-vault'],
    /** Extra online backups on deployments of their own with this vault pool size each. */
    vaultWorkers,
    /** Runs per pool size (alternating); each size reports its median run. */
    vaultRepeat,
    /** PostgreSQL for Holdfast's server (a fresh database is made beside the one named); else PGlite. */
    databaseUrl: values['database-url'],
    /** Holdfast's server and agent write V8 CPU profiles (main threads) into this folder. */
    cpuProfDir: values['cpu-prof'] ? path.resolve(values['cpu-prof']) : undefined,
  };
}

/** The peers must be installed by the operator; the bench never installs anything. */
export async function checkPrerequisites(tools: ToolName[]): Promise<Record<string, string>> {
  const versions: Record<string, string> = {};
  const missing: string[] = [];
  for (const [tool, pkg] of [
    ['restic', 'restic'],
    ['borg', 'borgbackup'],
  ] as const) {
    if (!tools.includes(tool)) continue;
    const v = await peerVersion(tool);
    if (v) versions[tool] = v;
    else missing.push(`${tool} (Debian package ${pkg})`);
  }
  if ((tools.includes('restic') || tools.includes('borg')) && !existsSync('/usr/bin/time'))
    missing.push('/usr/bin/time (Debian package time)');
  if (!existsSync(path.join(sharedDir, 'gen-dataset.mjs')))
    missing.push(`the dataset generator at ${sharedDir}`);
  if (missing.length > 0) {
    throw new Error(
      `missing: ${missing.join(', ')}.\nInstall with: apt-get install -y restic borgbackup time`,
    );
  }
  return versions;
}

export function machine(versions: Record<string, string>): Record<string, string> {
  const git = (args: string[]) =>
    execFileSync('git', args, {
      cwd: repoRoot,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  let commit = 'unknown';
  try {
    commit = `${git(['rev-parse', '--short', 'HEAD'])}${git(['status', '--porcelain']) ? ' (+ uncommitted changes)' : ''}`;
  } catch {}
  return {
    machine: `${os.availableParallelism()} CPUs (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / 1024 ** 3).toFixed(1)} GiB memory, Linux ${os.release()}`,
    node: process.version,
    holdfast: `commit ${commit}`,
    ...versions,
  };
}
