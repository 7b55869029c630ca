import { execFile, spawn } from 'node:child_process';
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

/**
 * Runs Debian's `restic` binary against a repository folder, for the interoperability tests.
 * The cache is off (no state outside the temp folder) and the password comes from the
 * environment, as a user would script it.
 */

const execFileP = promisify(execFile);

export interface ResticResult {
  code: number;
  stdout: string;
  stderr: string;
}

export async function restic(repo: string, password: string, args: string[]): Promise<ResticResult> {
  try {
    const { stdout, stderr } = await execFileP('restic', ['-r', repo, '--no-cache', ...args], {
      env: { ...process.env, RESTIC_PASSWORD: password, RESTIC_PROGRESS_FPS: '0.01' },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** Like restic(), but fails the test with restic's own output when it exits non-zero. */
export async function resticOk(repo: string, password: string, args: string[]): Promise<string> {
  const r = await restic(repo, password, args);
  if (r.code !== 0) {
    throw new Error(
      `restic ${args.join(' ')} exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`,
    );
  }
  return r.stdout;
}

/**
 * Starts `restic backup --stdin` and keeps its stdin open, so restic holds its (shared) lock
 * until finish() writes `data` and closes the stream. This is a real restic lock in the
 * repository, for testing that Holdfast honours it.
 */
export function resticBackupFromStdin(
  repo: string,
  password: string,
  args: string[],
): { finish: (data: Buffer) => Promise<ResticResult> } {
  const child = spawn('restic', ['-r', repo, '--no-cache', 'backup', '--stdin', ...args], {
    env: { ...process.env, RESTIC_PASSWORD: password },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
  });
  const done = new Promise<ResticResult>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
  return {
    finish: async (data: Buffer) => {
      child.stdin.end(data);
      return done;
    },
  };
}

export async function tempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

/** A folder's content as relative path -> file bytes, 'dir', or 'symlink -> target'. */
export async function describeTree(root: string): Promise<Map<string, string | Buffer>> {
  const out = new Map<string, string | Buffer>();
  async function walk(dir: string, rel: string): Promise<void> {
    for (const name of (await readdir(dir)).sort()) {
      const full = path.join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(full);
      if (st.isSymbolicLink()) out.set(r, `symlink -> ${await readlink(full)}`);
      else if (st.isDirectory()) {
        out.set(r, 'dir');
        await walk(full, r);
      } else out.set(r, await readFile(full));
    }
  }
  await walk(root, '');
  return out;
}
