import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ImageChange, MutationSummary } from './dataset.ts';
import { DEFAULT_BLOCK_SIZE } from '../protocol/version.ts';
import { MiB } from './measure.ts';
import type { DataKind, Phase, StepMeasure, ToolName } from './tool.ts';

export const STEPS = [
  { id: 'full-files', label: 'full backup, files', kind: 'files', phase: 'full' },
  { id: 'full-image', label: 'full backup, image', kind: 'image', phase: 'full' },
  { id: 'incr-files', label: 'incremental, files', kind: 'files', phase: 'incremental' },
  { id: 'incr-image', label: 'incremental, image', kind: 'image', phase: 'incremental' },
  { id: 'restore-files', label: 'restore, files', kind: 'files', phase: 'restore' },
  { id: 'restore-image', label: 'restore, image', kind: 'image', phase: 'restore' },
  // Holdfast only: `online-backup --wait` of the full files point into a local-folder vault
  { id: 'vault-files', label: 'online backup to vault, files', kind: 'files', phase: 'vault' },
  { id: 'vault-files-1w', label: 'online backup, vault pool 1 worker', kind: 'files', phase: 'vault' },
  { id: 'vault-files-2w', label: 'online backup, vault pool 2 workers', kind: 'files', phase: 'vault' },
] as const satisfies readonly {
  id: string;
  label: string;
  kind: DataKind;
  phase: Phase | 'restore' | 'vault';
}[];
export const VAULT_STEPS: readonly StepId[] = ['vault-files', 'vault-files-1w', 'vault-files-2w'];
export type StepId = (typeof STEPS)[number]['id'];

export interface Row {
  step: StepId;
  tool: ToolName;
  status: 'ok' | 'n/a' | 'failed';
  /** Reason for n/a or failed. */
  note?: string;
  m?: StepMeasure;
}

export interface BenchResult {
  date: string;
  machine: Record<string, string>;
  scale: number;
  imageBlockSize: number;
  dataset: { filesCount: number; filesBytes: number; diskBytes: number };
  mutation?: MutationSummary;
  imageChange?: ImageChange;
  rows: Row[];
  notes: string[];
  totalWallS: number;
}

const mib = (b: number) => (b / MiB).toFixed(1);
const secs = (s: number) => (s < 10 ? s.toFixed(2) : s.toFixed(1));

function cells(r: Row): string[] {
  if (r.status !== 'ok' || !r.m) {
    const text = r.status === 'failed' ? `**FAILED**: ${r.note ?? ''}` : (r.note ?? 'n/a');
    return [text.replace(/\|/g, '\\|').replace(/\s+/g, ' ').slice(0, 160), '–', '–', '–', '–'];
  }
  const m = r.m;
  const restore = r.step.startsWith('restore');
  return [
    secs(m.wallS),
    m.cpuDetail ? `${secs(m.cpuS)} (${m.cpuDetail})` : secs(m.cpuS),
    m.peakRssMiB === null
      ? '–'
      : m.rssDetail
        ? `${m.peakRssMiB.toFixed(0)} (${m.rssDetail})`
        : m.peakRssMiB.toFixed(0),
    m.sentBytes === null ? 'n/a (local)' : mib(m.sentBytes),
    restore || m.storedBytes === null ? '–' : mib(m.storedBytes),
  ];
}

function find(rows: Row[], step: StepId, tool: ToolName): StepMeasure | undefined {
  const r = rows.find((x) => x.step === step && x.tool === tool);
  return r?.status === 'ok' ? r.m : undefined;
}

/** The project's targets, checked against this run (only where both sides were measured). */
function targets(res: BenchResult): string[] {
  const out = ['| target | measured | met |', '| --- | --- | --- |'];
  const ratio = (step: StepId, peer: 'restic' | 'borg') => {
    const h = find(res.rows, step, 'holdfast');
    const p = find(res.rows, step, peer);
    if (!h || !p) return;
    const x = h.wallS / p.wallS;
    out.push(
      `| ${step}: Holdfast wall ≤ 1/2 of ${peer} | ${secs(h.wallS)} s vs ${secs(p.wallS)} s = ${x.toFixed(2)}x | ${x <= 0.5 ? 'yes' : 'no'} |`,
    );
  };
  for (const step of ['full-files', 'full-image'] as const)
    for (const peer of ['restic', 'borg'] as const) ratio(step, peer);
  for (const step of ['incr-files', 'incr-image', 'restore-files', 'restore-image'] as const)
    ratio(step, 'restic');
  const hi = find(res.rows, 'incr-image', 'holdfast');
  if (hi && res.imageChange) {
    const limit = 2 * res.imageChange.zstd3Bytes;
    for (const [what, v] of [
      ['sent', hi.sentBytes],
      ['stored', hi.storedBytes],
    ] as const) {
      if (v === null) continue;
      out.push(
        `| incr-image: ${what} ≤ 2x zstd-3 of changed bytes (${mib(limit)} MiB) | ${mib(v)} MiB | ${v <= limit ? 'yes' : 'no'} |`,
      );
    }
  }
  const v = find(res.rows, 'vault-files', 'holdfast');
  const rf = find(res.rows, 'full-files', 'restic');
  if (v && rf) {
    const x = v.wallS / rf.wallS;
    out.push(
      `| vault-files: online backup faster than restic backup (full files) | ${secs(v.wallS)} s vs ${secs(rf.wallS)} s = ${x.toFixed(2)}x | ${x < 1 ? 'yes' : 'no'} |`,
    );
    if (v.storedBytes !== null && rf.storedBytes !== null) {
      out.push(
        `| vault-files: vault no larger than restic repo (full files) | ${mib(v.storedBytes)} MiB vs ${mib(rf.storedBytes)} MiB | ${v.storedBytes <= rf.storedBytes ? 'yes' : 'no'} |`,
      );
    }
  }
  const w1 = find(res.rows, 'vault-files-1w', 'holdfast');
  const w2 = find(res.rows, 'vault-files-2w', 'holdfast');
  if (w1 && w2) {
    const x = w1.wallS / w2.wallS;
    out.push(
      `| vault pool: 2 workers ≥ 1.6x as fast as 1 (median runs) | ${secs(w1.wallS)} s vs ${secs(w2.wallS)} s = ${x.toFixed(2)}x | ${x >= 1.6 ? 'yes' : 'no'} |`,
    );
  }
  const holdfastRows = res.rows.filter((r) => r.tool === 'holdfast' && r.m?.rssDetail);
  if (holdfastRows.length > 0) {
    const peak = Math.max(...holdfastRows.map((r) => r.m?.peakRssMiB ?? 0));
    out.push(
      `| server and agent peak RSS < 300 MiB | ${peak.toFixed(0)} MiB (highest step) | ${peak < 300 ? 'yes' : 'no'} |`,
    );
  }
  return out.length > 2 ? out : [...out, '| (nothing to compare: a side is missing) | | |'];
}

export function renderMarkdown(res: BenchResult): string {
  const d = res.dataset;
  const lines = [
    `# Holdfast benchmark — ${res.date}`,
    '',
    ...Object.entries(res.machine).map(([k, v]) => `- ${k}: ${v}`),
    `- dataset: shared/bench seed perf-v1, **scale ${res.scale}**: files/ ${d.filesCount} files, ${mib(d.filesBytes)} MiB; ` +
      `disk.img ${mib(d.diskBytes)} MiB; Holdfast block sizes: image ${res.imageBlockSize} B (fixed), ` +
      `files ${DEFAULT_BLOCK_SIZE.files} B (the default: content-defined blocks around it)`,
  ];
  if (res.mutation) {
    const s = res.mutation.summary;
    lines.push(
      `- mutation round 1: files/ ${mib(s.filesBytesTouched)} MiB touched (${s.filesPctTouched}%), ` +
        `disk.img ${res.mutation.diskWrites} writes, ${mib(res.mutation.diskBytesWritten)} MiB (${s.diskPctTouched}%)`,
    );
  }
  if (res.imageChange) {
    const c = res.imageChange;
    lines.push(
      `- disk.img changed bytes (4 KiB blocks): ${mib(c.changedBytes)} MiB in ${c.runs} runs; zstd-3 of those: ${mib(c.zstd3Bytes)} MiB`,
    );
  }
  lines.push(
    '- warm runs: the page cache is not dropped (not possible reliably here); every tool reads a fresh copy it just got',
    '',
    '| step | tool | wall s | CPU s | peak RSS MiB | sent MiB | stored MiB |',
    '| --- | --- | --- | --- | --- | --- | --- |',
  );
  for (const step of STEPS) {
    for (const r of res.rows.filter((x) => x.step === step.id))
      lines.push(`| ${step.label} | ${r.tool} | ${cells(r).join(' | ')} |`);
  }
  lines.push(
    '',
    'CPU s = user + sys of every process involved (Holdfast: server + agent from /proc/PID/stat; peers: GNU time). ' +
      'Peak RSS: peers from GNU time per step; Holdfast per step from VmHWM reset through /proc/PID/clear_refs. ' +
      "Sent: the Holdfast job's bytesSent (backups: block bytes on the wire, compressed; restores: the bytes the agent " +
      'wrote, as Holdfast reports them); peers use a local repository. ' +
      'Stored: growth of the repository (restic, borg) or DATA/store (Holdfast), du -sb; ' +
      'vault steps: the vault folder after the online backup, du -sb. Vault steps are Holdfast only ' +
      '(restic: compare with its full files backup).',
    '',
    '## Targets',
    '',
    ...targets(res),
    '',
    '## Notes',
    '',
    ...res.notes.map((n) => `- ${n}`),
    `- whole bench: ${res.totalWallS.toFixed(0)} s wall`,
  );
  return `${lines.join('\n')}\n`;
}

/** Writes bench/results/latest.md and latest.json; returns the Markdown. */
export async function writeReport(resultsDir: string, res: BenchResult): Promise<string> {
  const md = renderMarkdown(res);
  await mkdir(resultsDir, { recursive: true });
  await writeFile(path.join(resultsDir, 'latest.md'), md);
  await writeFile(path.join(resultsDir, 'latest.json'), `${JSON.stringify(res, null, 2)}\n`);
  return md;
}
