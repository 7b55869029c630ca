import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { HttpError } from '../lib/http-client.ts';
import { cli } from '../test/harness.ts';
import { type Deployment, startDeployment } from './holdfast-procs.ts';
import { duBytes, MiB, ProcWatch, seconds } from './measure.ts';
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
 * Holdfast through its REST API (datasources, backups, restores) against a real server and
 * agent process (holdfast-procs.ts). Wall time runs from the POST to the moment polling sees
 * the job finished (100 ms polls); CPU and memory come from /proc of both processes.
 */

interface Job {
  id: string;
  state: string;
  rpId: string | null;
  bytesScanned: number;
  bytesSent: number;
  bytesStored: number;
  files: number;
  error: string | null;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
}

/** Seconds between two ISO timestamps of a job, or -1 if one is missing. */
const between = (a: string | null, b: string | null) =>
  a && b ? (Date.parse(b) - Date.parse(a)) / 1000 : -1;

const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const JOB_TIMEOUT_MS = 2 * 60 * 60_000;

export class HoldfastDriver implements ToolDriver {
  readonly name = 'holdfast';
  private dep: Deployment | undefined;
  private watches: ProcWatch[] = [];
  private readonly datasources = new Map<DataKind, string>();
  private readonly refused = new Map<DataKind, string>();
  private readonly latestRp = new Map<DataKind, string>();

  constructor(private readonly ctx: ToolContext) {}

  private get d(): Deployment {
    if (!this.dep) throw new Error('Holdfast is not started');
    return this.dep;
  }

  async setup(): Promise<void> {
    const d = await startDeployment(this.ctx.toolDir, this.ctx.databaseUrl, this.ctx.cpuProfDir);
    this.dep = d;
    this.watches = [
      new ProcWatch('srv', d.server.child.pid ?? 0),
      new ProcWatch('agt', d.agent.child.pid ?? 0),
    ];
    for (const kind of ['files', 'image'] as const) {
      const body = {
        agent: d.agentName,
        path: sourcePath(this.ctx, kind),
        kind,
        blockSize: undefined as number | undefined,
      };
      if (kind === 'image') body.blockSize = this.ctx.imageBlockSize;
      try {
        this.datasources.set(kind, (await d.api<{ id: string }>('POST', '/datasources', body)).id);
      } catch (err) {
        if (kind === 'image' && err instanceof HttpError && err.status === 400) {
          this.refused.set(kind, `n/a (image datasources not supported yet: ${err.message})`);
        } else throw err;
      }
    }
  }

  unsupported(kind: DataKind): string | undefined {
    return this.refused.get(kind);
  }

  /** Polls a job to its end; fails fast if the server or agent process died meanwhile. */
  private async waitJob(id: string, d: Deployment = this.d): Promise<Job> {
    const deadline = Date.now() + JOB_TIMEOUT_MS;
    for (;;) {
      d.checkAlive();
      const job = await d.api<Job>('GET', `/jobs/${id}`);
      if (TERMINAL.has(job.state)) {
        if (job.state !== 'succeeded') throw new Error(`Holdfast job ${id} ${job.state}: ${job.error ?? ''}`);
        return job;
      }
      if (Date.now() > deadline)
        throw new Error(`Holdfast job ${id} still ${job.state} after ${JOB_TIMEOUT_MS} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Runs one job and measures it: wall, CPU and per-step peak RSS of both processes, store growth. */
  private async measured(
    post: () => Promise<Job>,
    on: { d: Deployment; watches: ProcWatch[] } = { d: this.d, watches: this.watches },
  ): Promise<{ job: Job; m: StepMeasure }> {
    const store = path.join(on.d.dataDir, 'store');
    const storeBefore = await duBytes(store);
    for (const w of on.watches) await w.resetPeak();
    const cpuBefore = await Promise.all(on.watches.map((w) => w.cpuSeconds()));
    const start = process.hrtime.bigint();
    const job = await this.waitJob((await post()).id, on.d);
    const wallS = seconds(start);
    const cpu = await Promise.all(
      on.watches.map(async (w, i) => (await w.cpuSeconds()) - (cpuBefore[i] ?? 0)),
    );
    const peaks = await Promise.all(on.watches.map(async (w) => (await w.peakKiB()) / 1024));
    const label = (i: number) => on.watches[i]?.label ?? '?';
    const m: StepMeasure = {
      wallS,
      cpuS: cpu.reduce((a, b) => a + b, 0),
      cpuDetail: cpu.map((c, i) => `${label(i)} ${c.toFixed(1)}`).join(' + '),
      peakRssMiB: Math.max(...peaks),
      rssDetail: peaks.map((p, i) => `${label(i)} ${p.toFixed(0)}`).join(' / '),
      sentBytes: job.bytesSent,
      storedBytes: (await duBytes(store)) - storeBefore,
      extra: {
        jobBytesScanned: job.bytesScanned,
        jobBytesStored: job.bytesStored,
        jobFiles: job.files,
        // Where the wall time went: waiting for the agent to pick the job up, then running it.
        jobQueuedS: between(job.createdAt, job.startedAt),
        jobRunningS: between(job.startedAt, job.finishedAt),
      },
    };
    return { job, m };
  }

  async backup(kind: DataKind, _phase: Phase): Promise<StepMeasure> {
    const datasourceId = this.datasources.get(kind);
    if (!datasourceId) throw new Error(`no Holdfast datasource for ${kind}`);
    // full:false both times: the first backup of a datasource reads everything anyway.
    const { job, m } = await this.measured(() =>
      this.d.api<Job>('POST', '/backups', { datasourceId, full: false }),
    );
    if (!job.rpId) throw new Error(`Holdfast backup job ${job.id} succeeded without a recovery point`);
    this.latestRp.set(kind, job.rpId);
    return m;
  }

  async restore(kind: DataKind, target: string): Promise<RestoreMeasure> {
    const rpId = this.latestRp.get(kind);
    if (!rpId) throw new Error(`no Holdfast ${kind} recovery point to restore`);
    if (kind === 'files') await mkdir(target, { recursive: true });
    const { m } = await this.measured(() => this.d.api<Job>('POST', '/restores', { rpId, target }));
    // A files restore fills the target; an image restore may write the image into it under its name.
    return { ...m, restoredPath: kind === 'files' ? target : path.join(target, 'disk.img') };
  }

  /**
   * Online backup of the newest files point into a new local-folder vault under the tool folder:
   * `POST /online-backups` polled to its end, as the disk steps are. Stored = the vault folder.
   */
  async vault(): Promise<StepMeasure> {
    return this.vaultOn({ d: this.d, watches: this.watches }, path.join(this.ctx.toolDir, 'vault'));
  }

  /**
   * The same on a deployment of its own whose server runs the vault pool with `workers`
   * threads (HOLDFAST_VAULT_WORKERS): disk backup of the files copy (not timed), then the timed
   * online backup into a fresh vault.
   */
  async vaultScaling(workers: number): Promise<StepMeasure> {
    const dir = path.join(this.ctx.toolDir, `vault-scaling-${workers}`);
    // A fresh deployment each run: the last run's data, agent state and vault go first.
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir, { recursive: true });
    const before = process.env.HOLDFAST_VAULT_WORKERS;
    process.env.HOLDFAST_VAULT_WORKERS = String(workers);
    let d: Deployment;
    try {
      d = await startDeployment(dir, this.ctx.databaseUrl, this.ctx.cpuProfDir);
    } finally {
      if (before === undefined) delete process.env.HOLDFAST_VAULT_WORKERS;
      else process.env.HOLDFAST_VAULT_WORKERS = before;
    }
    try {
      const watches = [
        new ProcWatch('srv', d.server.child.pid ?? 0),
        new ProcWatch('agt', d.agent.child.pid ?? 0),
      ];
      const ds = await d.api<{ id: string }>('POST', '/datasources', {
        agent: d.agentName,
        path: sourcePath(this.ctx, 'files'),
        kind: 'files',
      });
      const job = await d.api<Job>('POST', '/backups', { datasourceId: ds.id, full: false });
      await this.waitJob(job.id, d);
      const m = await this.vaultOn({ d, watches }, path.join(dir, 'vault'), [ds.id]);
      return { ...m, extra: { ...m.extra, vaultWorkers: workers } };
    } finally {
      await d.stop();
    }
  }

  private async vaultOn(
    on: { d: Deployment; watches: ProcWatch[] },
    vaultDir: string,
    datasourceIds = [this.datasources.get('files') ?? ''],
  ): Promise<StepMeasure> {
    const pass = path.join(path.dirname(vaultDir), 'vault-pass');
    await writeFile(pass, 'holdfast-bench-vault-passphrase\n', { mode: 0o600 });
    const created = await cli([
      'vault',
      'create',
      '--server',
      on.d.url,
      '--data',
      on.d.dataDir,
      '--path',
      vaultDir,
      '--passphrase-file',
      pass,
      '--json',
    ]);
    if (created.code !== 0) throw new Error(`vault create failed: ${created.stderr}`);
    const { job, m } = await this.measured(
      () => on.d.api<Job>('POST', '/online-backups', { datasourceIds }),
      on,
    );
    const result = (job as Job & { result?: { bytesUploaded?: number; packsUploaded?: number } }).result;
    return {
      ...m,
      sentBytes: result?.bytesUploaded ?? null,
      storedBytes: await duBytes(vaultDir),
      extra: { ...m.extra, vaultPacks: result?.packsUploaded ?? -1 },
    };
  }

  async close(): Promise<string[]> {
    const d = this.dep;
    if (!d) return [];
    const notes: string[] = [];
    const peaks = await Promise.all(this.watches.map(async (w) => (await w.wholeRunPeakKiB()) / 1024));
    const perStep = this.watches.every((w) => w.perStepPeak);
    notes.push(
      `holdfast: peak RSS over the whole run (start-up included): server ${peaks[0]?.toFixed(0)} MiB, ` +
        `agent ${peaks[1]?.toFixed(0)} MiB` +
        (perStep ? '' : ' (clear_refs refused: per-step peaks are peaks since start)'),
    );
    const mib = async (p: string) => ((await duBytes(p)) / MiB).toFixed(1);
    notes.push(
      `holdfast: data folder ${await mib(d.dataDir)} MiB after all steps ` +
        `(store ${await mib(path.join(d.dataDir, 'store'))} MiB; the rest is ` +
        (this.ctx.databaseUrl
          ? 'manifests, certificate and token; metadata is in PostgreSQL)'
          : 'mostly the PGlite database)'),
    );
    await d.stop();
    return notes;
  }
}
