import { spawn } from 'node:child_process';

/** Output kept from a script for its error message: enough to diagnose, bounded in memory. */
const TAIL_BYTES = 2000;
const SCRIPT_TIMEOUT_MS = 30 * 60_000;

/**
 * Runs a pre- or post-backup script (`/bin/sh -c`), as DPM does for application-consistent
 * backups (flush and freeze a database before the read, thaw it after). Resolves on exit 0;
 * otherwise rejects with the exit status and the tail of what the script printed.
 */
export async function runScript(
  which: 'pre-backup' | 'post-backup',
  script: string,
  env: Record<string, string>,
  timeoutMs = SCRIPT_TIMEOUT_MS,
): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    // Own process group (detached): a timeout kills the script and everything it started.
    const child = spawn('/bin/sh', ['-c', script], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let tail = '';
    const keep = (d: Buffer) => {
      tail = (tail + d.toString()).slice(-TAIL_BYTES);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    const timer = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${which} script could not start: ${err.message}`));
    });
    // 'exit', not 'close': a background process the script left running may hold its output
    // pipes open for a long time, and must not hold the backup.
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else {
        const how = signal ? `was killed by ${signal}` : `exited with ${code}`;
        reject(new Error(`${which} script ${how}${tail.trim() ? `: ${tail.trim()}` : ''}`));
      }
    });
  });
}
