/** What every benchmarked tool (Holdfast, restic, borg) offers the runner. */

export const TOOL_NAMES = ['holdfast', 'restic', 'borg'] as const;
export type ToolName = (typeof TOOL_NAMES)[number];
export type DataKind = 'files' | 'image';
export type Phase = 'full' | 'incremental';

export interface StepMeasure {
  wallS: number;
  /** user + sys of every process involved. */
  cpuS: number;
  /** Per-process split, when more than one process is involved. */
  cpuDetail?: string;
  peakRssMiB: number | null;
  rssDetail?: string;
  /** Bytes over the network; null for a local repository. */
  sentBytes: number | null;
  /** Growth of the repository / chunk store during the step. */
  storedBytes: number | null;
  extra?: Record<string, number | string>;
}

export interface RestoreMeasure extends StepMeasure {
  /** Where the restored tree (files) or image file (image) ended up, to verify against the source. */
  restoredPath: string;
}

export interface ToolContext {
  /** Per-tool scratch folder: repository or server data, logs, restore targets. */
  toolDir: string;
  /** The tool's own copy of the dataset: WORK/files and WORK/disk.img. */
  work: string;
  imageBlockSize: number;
  databaseUrl?: string;
  /** Holdfast: where its processes write V8 CPU profiles (`--cpu-prof DIR`). */
  cpuProfDir?: string;
}

export interface ToolDriver {
  readonly name: ToolName;
  setup(): Promise<void>;
  /** Why this tool cannot handle `kind` (the step is then reported as n/a), or undefined. */
  unsupported(kind: DataKind): string | undefined;
  backup(kind: DataKind, phase: Phase): Promise<StepMeasure>;
  /** Restores the latest backup of `kind` into the empty folder `target`. */
  restore(kind: DataKind, target: string): Promise<RestoreMeasure>;
  /** Stops processes; returns notes for the report (e.g. whole-run peak memory). */
  close(): Promise<string[]>;
}

export const sourcePath = (ctx: ToolContext, kind: DataKind): string =>
  kind === 'files' ? `${ctx.work}/files` : `${ctx.work}/disk.img`;
