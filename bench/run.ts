import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import {
  ensureDataset,
  freshCopy,
  type ImageChange,
  imageChange,
  type MutationSummary,
  mutate,
} from './dataset.ts';
import { HoldfastDriver } from './holdfast.ts';
import { seconds, settleDisks } from './measure.ts';
import { BorgDriver, ResticDriver } from './peers.ts';
import { type BenchResult, type Row, STEPS, type StepId, VAULT_STEPS, writeReport } from './report.ts';
import { type BenchOptions, checkPrerequisites, machine, options, repoRoot, sharedDir } from './setup.ts';
import {
  type DataKind,
  type StepMeasure,
  sourcePath,
  type ToolContext,
  type ToolDriver,
  type ToolName,
} from './tool.ts';
import { verify } from './verify.ts';

/*
 * npm run bench -- [--scale 1] [--out ./bench-data] [--only files|image] [--tools holdfast,restic,borg]
 *                  [--image-block-size 65536] [--keep] [--no-vault] [--vault-workers 1,2] [--vault-repeat 3]
 *                  [--cpu-prof DIR]
 * Each tool gets a fresh copy of the dataset: full backups, mutation round 1, incrementals,
 * restores into empty folders verified by SHA-256 against the mutated copy. See docs/PERFORMANCE.md.
 */

/** The run of median wall time, with every run's wall time noted. */
function medianRun(ms: StepMeasure[]): StepMeasure {
  const sorted = [...ms].sort((a, b) => a.wallS - b.wallS);
  const median = sorted[Math.floor((sorted.length - 1) / 2)]!;
  return { ...median, extra: { ...median.extra, runsWallS: ms.map((m) => m.wallS.toFixed(2)).join(', ') } };
}

function makeDriver(tool: ToolName, ctx: ToolContext): ToolDriver {
  if (tool === 'holdfast') return new HoldfastDriver(ctx);
  return tool === 'restic' ? new ResticDriver(ctx) : new BorgDriver(ctx);
}

interface Shared {
  datasetDir: string;
  mutation?: MutationSummary;
  imageChange?: ImageChange;
}

/** A tool's scratch folder (its copy of the dataset, repository or server data, restores). */
const toolDirOf = (opts: BenchOptions, tool: ToolName) => path.join(opts.out, 'work', tool);

async function benchTool(tool: ToolName, opts: BenchOptions, shared: Shared, rows: Row[], notes: string[]) {
  const toolDir = toolDirOf(opts, tool);
  await rm(toolDir, { recursive: true, force: true });
  await mkdir(toolDir, { recursive: true });
  const ctx: ToolContext = {
    toolDir,
    work: path.join(toolDir, 'src'),
    imageBlockSize: opts.blockSize,
    databaseUrl: opts.databaseUrl,
    cpuProfDir: opts.cpuProfDir,
  };
  process.stderr.write(`[${tool}] copying the dataset to ${ctx.work}\n`);
  await freshCopy(shared.datasetDir, ctx.work);
  const driver = makeDriver(tool, ctx);
  const broken = new Map<DataKind, string>();
  const step = async (id: StepId, kind: DataKind, body: () => Promise<Row['m']>) => {
    const skip = driver.unsupported(kind) ?? (broken.has(kind) ? `n/a (${broken.get(kind)})` : undefined);
    if (skip) {
      rows.push({ step: id, tool, status: 'n/a', note: skip });
      return;
    }
    process.stderr.write(`[${tool}] ${id} ...`);
    try {
      await settleDisks();
      const m = await body();
      rows.push({ step: id, tool, status: 'ok', m });
      process.stderr.write(` ${m?.wallS.toFixed(2)} s\n`);
    } catch (err) {
      const msg = (err as Error).message;
      process.stderr.write(`\n\n*** ${tool} ${id} FAILED ***\n${msg}\n\n`);
      rows.push({ step: id, tool, status: 'failed', note: msg.split('\n')[0] });
      // a failed vault step does not make the disk steps of its kind n/a
      if (!VAULT_STEPS.includes(id)) broken.set(kind, `${id} failed`);
      process.exitCode = 1;
    }
  };
  try {
    await driver.setup();
    for (const kind of opts.kinds) await step(`full-${kind}`, kind, () => driver.backup(kind, 'full'));
    // The online tier: the full files point copied into a local-folder vault (Holdfast only).
    if (driver instanceof HoldfastDriver && opts.kinds.includes('files') && opts.vault) {
      await step('vault-files', 'files', () => driver.vault());
    }
    shared.mutation = await mutate(sharedDir, ctx.work);
    if (opts.kinds.includes('image') && !shared.imageChange) {
      shared.imageChange = await imageChange(
        path.join(shared.datasetDir, 'disk.img'),
        sourcePath(ctx, 'image'),
      );
    }
    for (const kind of opts.kinds) await step(`incr-${kind}`, kind, () => driver.backup(kind, 'incremental'));
    for (const kind of opts.kinds) {
      const target = path.join(toolDir, `restore-${kind}`);
      await step(`restore-${kind}`, kind, async () => {
        const m = await driver.restore(kind, target);
        await verify(ctx, kind, m.restoredPath, target);
        return m;
      });
    }
    // Scaling of the vault pool: a deployment of its own per run and pool size (after the
    // restores). Runs alternate between the sizes, and each size reports its median run, so a
    // spell of load on the shared machine does not land on one size only.
    if (driver instanceof HoldfastDriver && opts.kinds.includes('files') && opts.vaultWorkers.length > 0) {
      const runs = new Map<number, StepMeasure[]>(opts.vaultWorkers.map((n) => [n, []]));
      const failed = new Map<number, Error>();
      for (let r = 0; r < opts.vaultRepeat; r++) {
        for (const n of opts.vaultWorkers) {
          if (failed.has(n)) continue;
          process.stderr.write(`[${tool}] vault pool ${n}w, run ${r + 1}/${opts.vaultRepeat} ...`);
          try {
            const m = await driver.vaultScaling(n);
            runs.get(n)!.push(m);
            process.stderr.write(` ${m.wallS.toFixed(2)} s\n`);
          } catch (err) {
            failed.set(n, err as Error);
            process.stderr.write(' failed\n');
          }
        }
      }
      notes.push(
        `${tool}: vault pool runs, wall s (each size reports its median): ` +
          opts.vaultWorkers
            .map(
              (n) =>
                `${n} worker${n > 1 ? 's' : ''} ${runs
                  .get(n)!
                  .map((m) => m.wallS.toFixed(2))
                  .join(', ')}`,
            )
            .join('; '),
      );
      for (const n of opts.vaultWorkers) {
        const id = `vault-files-${n}w` as StepId;
        await step(id, 'files', async () => {
          const err = failed.get(n);
          if (err) throw err;
          return medianRun(runs.get(n)!);
        });
      }
    }
  } catch (err) {
    process.stderr.write(`\n\n*** ${tool} FAILED ***\n${(err as Error).stack}\n\n`);
    notes.push(`${tool}: run aborted: ${(err as Error).message.split('\n')[0]}`);
    process.exitCode = 1;
  } finally {
    notes.push(...(await driver.close().catch((e: Error) => [`${tool}: close failed: ${e.message}`])));
  }
  for (const s of STEPS) {
    const vaultWanted =
      s.id === 'vault-files' ? opts.vault : opts.vaultWorkers.some((n) => `vault-files-${n}w` === s.id);
    const wanted =
      opts.kinds.includes(s.kind) && (!VAULT_STEPS.includes(s.id) || (tool === 'holdfast' && vaultWanted));
    if (wanted && !rows.some((r) => r.tool === tool && r.step === s.id)) {
      rows.push({ step: s.id, tool, status: 'failed', note: 'not run (tool aborted)' });
    }
  }
}

async function main(): Promise<void> {
  const started = process.hrtime.bigint();
  const opts = options();
  const versions = await checkPrerequisites(opts.tools);
  const manifest = await ensureDataset(sharedDir, opts.out, opts.scale);
  const shared: Shared = { datasetDir: path.join(opts.out, 'dataset') };
  const rows: Row[] = [];
  const notes: string[] = [];
  for (const tool of opts.tools) await benchTool(tool, opts, shared, rows, notes);
  const result: BenchResult = {
    date: new Date().toISOString(),
    machine: machine(versions),
    scale: opts.scale,
    imageBlockSize: opts.blockSize,
    dataset: manifest.totals,
    mutation: shared.mutation,
    imageChange: shared.imageChange,
    rows,
    notes,
    totalWallS: seconds(started),
  };
  const md = await writeReport(path.join(repoRoot, 'bench', 'results'), result);
  process.stdout.write(`\n${md}`);
  // Only now: on ext4, creating files soon after a large delete is several times slower
  // (docs/PERFORMANCE.md), so one tool's clean-up must not slow the next tool's restores.
  if (!opts.keep) {
    for (const tool of opts.tools) await rm(toolDirOf(opts, tool), { recursive: true, force: true });
  }
  const failed = rows.filter((r) => r.status === 'failed').length;
  if (failed > 0) process.stderr.write(`\n${failed} step(s) FAILED; see above and bench/results/latest.md\n`);
  process.stderr.write(`the dataset stays in ${shared.datasetDir} for the next run at this scale\n`);
}

main().catch((err: Error) => {
  process.stderr.write(`bench: ${err.message}\n`);
  process.exit(1);
});
