import { execFile } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { duBytes, MiB, runTimed, type Usage } from './measure.ts';
import {
  type DataKind,
  type Phase,
  type RestoreMeasure,
  type StepMeasure,
  sourcePath,
  type ToolContext,
  type ToolDriver,
} from './tool.ts';

/*
 * The peers, driven as their users would: a local repository each, one repository for both
 * the files tree and the image (as one Holdfast store holds both), encryption on.
 */

const exec = promisify(execFile);
const PASSWORD = 'holdfast-bench';

/** Version line of a peer, or undefined if it is not on PATH. */
export async function peerVersion(cmd: 'restic' | 'borg'): Promise<string | undefined> {
  try {
    const { stdout } = await exec(cmd, [cmd === 'restic' ? 'version' : '--version']);
    return stdout.trim().split('\n')[0];
  } catch {
    return undefined;
  }
}

abstract class PeerDriver implements ToolDriver {
  abstract readonly name: 'restic' | 'borg';
  protected readonly repo: string;
  protected readonly logFile: string;

  constructor(protected readonly ctx: ToolContext) {
    this.repo = path.join(ctx.toolDir, 'repo');
    this.logFile = path.join(ctx.toolDir, 'tool.log');
  }

  protected abstract env(): NodeJS.ProcessEnv;
  protected abstract init(): Promise<void>;
  protected abstract backupArgs(kind: DataKind, phase: Phase): { args: string[]; cwd: string };
  protected abstract restoreArgs(kind: DataKind, target: string): { args: string[]; restoredPath: string };

  async setup(): Promise<void> {
    await this.init();
  }

  unsupported(): string | undefined {
    return undefined;
  }

  protected run(args: string[], cwd: string): Promise<Usage> {
    return runTimed(this.name, args, { cwd, env: this.env(), logFile: this.logFile });
  }

  private measure(usage: Usage, storedBytes: number | null): StepMeasure {
    return {
      wallS: usage.wallS,
      cpuS: usage.cpuS,
      peakRssMiB: usage.peakRssKiB / 1024,
      sentBytes: null,
      storedBytes,
    };
  }

  async backup(kind: DataKind, phase: Phase): Promise<StepMeasure> {
    const before = await duBytes(this.repo);
    const { args, cwd } = this.backupArgs(kind, phase);
    const usage = await this.run(args, cwd);
    return this.measure(usage, (await duBytes(this.repo)) - before);
  }

  async restore(kind: DataKind, target: string): Promise<RestoreMeasure> {
    await mkdir(target, { recursive: true });
    const { args, restoredPath } = this.restoreArgs(kind, target);
    const usage = await this.run(args, target);
    return { ...this.measure(usage, null), restoredPath };
  }

  async close(): Promise<string[]> {
    return [`${this.name}: repository ${((await duBytes(this.repo)) / MiB).toFixed(1)} MiB after all steps`];
  }
}

/** restic 0.14: repository format v2, compression auto; snapshots tagged by kind for "latest". */
export class ResticDriver extends PeerDriver {
  readonly name = 'restic';

  protected env(): NodeJS.ProcessEnv {
    return { RESTIC_PASSWORD: PASSWORD, RESTIC_REPOSITORY: this.repo };
  }

  private get cacheArgs(): string[] {
    return ['--cache-dir', path.join(this.ctx.toolDir, 'cache')];
  }

  protected async init(): Promise<void> {
    await this.run(['init', '--repository-version', '2', ...this.cacheArgs], this.ctx.toolDir);
  }

  protected backupArgs(kind: DataKind): { args: string[]; cwd: string } {
    const args = [
      'backup',
      '--compression',
      'auto',
      '--tag',
      kind,
      ...this.cacheArgs,
      sourcePath(this.ctx, kind),
    ];
    return { args, cwd: this.ctx.work };
  }

  protected restoreArgs(kind: DataKind, target: string): { args: string[]; restoredPath: string } {
    // restic restores the absolute source path below the target.
    const restoredPath = path.join(target, sourcePath(this.ctx, kind));
    return {
      args: ['restore', 'latest', '--tag', kind, '--target', target, ...this.cacheArgs],
      restoredPath,
    };
  }
}

/** borg 1.2: repokey encryption, zstd level 3; cache and keys isolated under the tool folder. */
export class BorgDriver extends PeerDriver {
  readonly name = 'borg';
  private readonly archives: Record<DataKind, string[]> = { files: [], image: [] };

  protected env(): NodeJS.ProcessEnv {
    return {
      BORG_PASSPHRASE: PASSWORD,
      BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
      BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
      BORG_BASE_DIR: path.join(this.ctx.toolDir, 'home'),
    };
  }

  protected async init(): Promise<void> {
    await this.run(['init', '--encryption', 'repokey', this.repo], this.ctx.toolDir);
  }

  protected backupArgs(kind: DataKind, phase: Phase): { args: string[]; cwd: string } {
    const name = `${kind}-${phase}`;
    this.archives[kind].push(name);
    // Relative paths from inside WORK, so that the archive holds files/... and disk.img.
    const what = path.basename(sourcePath(this.ctx, kind));
    return { args: ['create', '--compression', 'zstd,3', `${this.repo}::${name}`, what], cwd: this.ctx.work };
  }

  protected restoreArgs(kind: DataKind, target: string): { args: string[]; restoredPath: string } {
    const latest = this.archives[kind].at(-1);
    if (!latest) throw new Error(`borg: no ${kind} archive to restore`);
    const restoredPath = path.join(target, path.basename(sourcePath(this.ctx, kind)));
    return { args: ['extract', `${this.repo}::${latest}`], restoredPath };
  }
}
