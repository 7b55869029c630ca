import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { compress } from 'zstd-napi';
import { MiB } from './measure.ts';

/*
 * The shared, seeded dataset (shared/bench/gen-dataset.mjs) is generated once per (seed, scale)
 * under OUT/dataset and never mutated there: every tool gets a fresh copy, and the mutation
 * (mutate.mjs refuses to apply a round twice) runs on that copy.
 */

const exec = promisify(execFile);
export const SEED = 'perf-v1';

export interface DatasetManifest {
  seed: string;
  scale: number;
  totals: { filesCount: number; filesBytes: number; diskBytes: number };
}

export interface MutationSummary {
  diskWrites: number;
  diskBytesWritten: number;
  summary: { filesBytesTouched: number; filesPctTouched: number; diskPctTouched: number };
}

async function runNode(script: string, args: string[], what: string): Promise<string> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    err += d;
    if (what === 'gen-dataset') process.stderr.write(d);
  });
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  if (code !== 0) throw new Error(`${what} failed (exit ${code}): ${err.trim() || out.trim()}`);
  return out;
}

async function readManifest(dir: string): Promise<DatasetManifest | undefined> {
  try {
    return JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8')) as DatasetManifest;
  } catch {
    return undefined;
  }
}

/** OUT/dataset for this scale: reused when its manifest matches and it was never mutated. */
export async function ensureDataset(
  sharedDir: string,
  outDir: string,
  scale: number,
): Promise<DatasetManifest> {
  const dir = path.join(outDir, 'dataset');
  const existing = await readManifest(dir);
  if (existing?.seed === SEED && existing.scale === scale && !existsSync(path.join(dir, '.mutated.json'))) {
    process.stderr.write(`reusing dataset ${dir} (seed ${SEED}, scale ${scale})\n`);
    return existing;
  }
  process.stderr.write(`generating dataset ${dir} (seed ${SEED}, scale ${scale}) ...\n`);
  await rm(dir, { recursive: true, force: true });
  await mkdir(outDir, { recursive: true });
  const gen = path.join(sharedDir, 'gen-dataset.mjs');
  await runNode(gen, ['--out', dir, '--seed', SEED, '--scale', String(scale)], 'gen-dataset');
  const made = await readManifest(dir);
  if (!made) throw new Error(`gen-dataset wrote no manifest in ${dir}`);
  return made;
}

/** A fresh, hardlink-free copy of the dataset at `work` (replacing whatever was there). */
export async function freshCopy(datasetDir: string, work: string): Promise<void> {
  await rm(work, { recursive: true, force: true });
  await mkdir(path.dirname(work), { recursive: true });
  await exec('cp', ['-a', datasetDir, work]);
}

/** Applies mutation round 1 to a copy and returns what it changed. */
export async function mutate(sharedDir: string, work: string): Promise<MutationSummary> {
  await runNode(
    path.join(sharedDir, 'mutate.mjs'),
    ['--out', work, '--seed', SEED, '--round', '1'],
    'mutate',
  );
  return JSON.parse(await readFile(path.join(work, 'mutation-1.json'), 'utf8')) as MutationSummary;
}

export interface ImageChange {
  changedBytes: number;
  /** Sum of the zstd-3 sizes of each changed run (4 KiB granularity), compressed separately. */
  zstd3Bytes: number;
  runs: number;
}

/**
 * The reference for the image-incremental target: which 4 KiB blocks of disk.img differ between
 * the pristine and the mutated copy, and what they weigh compressed with zstd level 3.
 */
export async function imageChange(original: string, mutated: string): Promise<ImageChange> {
  const BLOCK = 4096;
  const [a, b] = await Promise.all([open(original, 'r'), open(mutated, 'r')]);
  const bufA = Buffer.allocUnsafe(4 * MiB);
  const bufB = Buffer.allocUnsafe(4 * MiB);
  const result: ImageChange = { changedBytes: 0, zstd3Bytes: 0, runs: 0 };
  let run: Buffer[] = [];
  const flush = () => {
    if (run.length === 0) return;
    const data = Buffer.concat(run);
    result.changedBytes += data.length;
    result.zstd3Bytes += compress(data, { compressionLevel: 3 }).length;
    result.runs++;
    run = [];
  };
  try {
    for (let pos = 0; ; ) {
      const [ra, rb] = await Promise.all([
        a.read(bufA, 0, bufA.length, pos),
        b.read(bufB, 0, bufB.length, pos),
      ]);
      if (ra.bytesRead !== rb.bytesRead) throw new Error(`${original} and ${mutated} differ in size`);
      if (ra.bytesRead === 0) break;
      for (let off = 0; off < ra.bytesRead; off += BLOCK) {
        const end = Math.min(off + BLOCK, ra.bytesRead);
        if (bufA.subarray(off, end).equals(bufB.subarray(off, end))) flush();
        else run.push(Buffer.from(bufB.subarray(off, end)));
      }
      pos += ra.bytesRead;
    }
    flush();
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
  return result;
}
