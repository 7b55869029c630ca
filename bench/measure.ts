import { execFile, spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { promisify } from 'node:util';

/*
 * How the bench measures: wall time with hrtime around the whole step, CPU and peak RSS of a
 * one-shot child through GNU time, CPU of a long-running process from /proc/PID/stat, bytes
 * stored as `du -sb` growth. Everything runs warm (page cache not dropped).
 */

const exec = promisify(execFile);

export interface Usage {
  wallS: number;
  cpuS: number;
  peakRssKiB: number;
}

export const MiB = 1024 * 1024;
export const seconds = (start: bigint) => Number(process.hrtime.bigint() - start) / 1e9;

/** Runs `cmd args` under GNU time; output goes to `logFile`. Throws with the log tail if it fails. */
export async function runTimed(
  cmd: string,
  args: string[],
  opts: { cwd: string; env?: NodeJS.ProcessEnv; logFile: string },
): Promise<Usage> {
  const timeFile = `${opts.logFile}.time`;
  const log = createWriteStream(opts.logFile, { flags: 'a' });
  log.write(`$ ${cmd} ${args.join(' ')}   (cwd ${opts.cwd})\n`);
  const start = process.hrtime.bigint();
  const child = spawn('/usr/bin/time', ['-f', '%e %U %S %M', '-o', timeFile, cmd, ...args], {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  });
  const wallS = seconds(start);
  await new Promise<void>((resolve) => log.end(resolve));
  if (code !== 0) {
    const tail = (await readFile(opts.logFile, 'utf8')).split('\n').slice(-15).join('\n');
    throw new Error(`${cmd} ${args[0] ?? ''} exited with ${code} (log ${opts.logFile}):\n${tail}`);
  }
  // GNU time may prepend "Command exited with non-zero status"; the numbers are on the last line.
  const line = (await readFile(timeFile, 'utf8')).trim().split('\n').pop() ?? '';
  await rm(timeFile, { force: true });
  const [, user, sys, rss] = line.split(' ').map(Number);
  if (user === undefined || sys === undefined || rss === undefined || Number.isNaN(rss)) {
    throw new Error(`cannot parse GNU time output "${line}"`);
  }
  return { wallS, cpuS: user + sys, peakRssKiB: rss };
}

/**
 * Writes every dirty page back (`sync`) before a step is timed: the dataset copy (3.5 GB at
 * scale 1) and the steps before would otherwise be written back during the next step, and slow
 * most the tool that syncs its own writes (Holdfast acknowledges blocks only once fsynced).
 */
export async function settleDisks(): Promise<void> {
  await exec('sync');
}

/** Bytes under a path (`du -sb`), 0 if it does not exist. */
export async function duBytes(p: string): Promise<number> {
  try {
    const { stdout } = await exec('du', ['-sb', p]);
    return Number(stdout.split('\t')[0]);
  } catch (err) {
    if ((err as { stderr?: string }).stderr?.includes('No such file')) return 0;
    throw err;
  }
}

let clkTck: number | undefined;
async function ticksPerSecond(): Promise<number> {
  clkTck ??= Number((await exec('getconf', ['CLK_TCK'])).stdout.trim());
  return clkTck;
}

/**
 * CPU and memory of a long-running process (the Holdfast server or agent), from /proc.
 * `resetPeak` writes 5 to /proc/PID/clear_refs, which resets VmHWM to the current RSS (Linux
 * >= 4.0), so each step gets its own peak; where that is refused, peaks cover the whole run.
 */
export class ProcWatch {
  private runPeakKiB = 0;
  perStepPeak = true;

  constructor(
    readonly label: string,
    readonly pid: number,
  ) {}

  /** utime + stime of all threads (worker threads included), in seconds. */
  async cpuSeconds(): Promise<number> {
    const stat = await readFile(`/proc/${this.pid}/stat`, 'utf8');
    // Fields after "(comm)": state is field 3, utime 14, stime 15 (1-based, proc(5)).
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / (await ticksPerSecond());
  }

  async peakKiB(): Promise<number> {
    const status = await readFile(`/proc/${this.pid}/status`, 'utf8');
    const m = /VmHWM:\s+(\d+) kB/.exec(status);
    if (!m) throw new Error(`no VmHWM in /proc/${this.pid}/status (${this.label})`);
    const kib = Number(m[1]);
    this.runPeakKiB = Math.max(this.runPeakKiB, kib);
    return kib;
  }

  async resetPeak(): Promise<void> {
    await this.peakKiB(); // keep the peak so far for the whole-run figure
    if (!this.perStepPeak) return;
    try {
      await writeFile(`/proc/${this.pid}/clear_refs`, '5');
    } catch {
      this.perStepPeak = false;
    }
  }

  async wholeRunPeakKiB(): Promise<number> {
    await this.peakKiB();
    return this.runPeakKiB;
  }
}
