import { type ChildProcess, spawn } from 'node:child_process';
import { realpathSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/*
 * Storage emulators as real child processes for tests: each on a free loopback port with a
 * temp data folder, waited for until it answers HTTP, and stopped (SIGTERM, then SIGKILL)
 * with its folder removed. Nothing is left running: stop() waits for the exit.
 */

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** The JS file behind node_modules/.bin/NAME (run with this process's node, not a shell shim). */
export function binScript(name: string): string {
  return realpathSync(path.join(ROOT, 'node_modules', '.bin', name));
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

export interface EmulatorProcess {
  port: number;
  /** http://127.0.0.1:PORT */
  url: string;
  dataDir: string;
  readonly child: ChildProcess;
  /** Kills the process, waits for its exit, removes the data folder. Idempotent. */
  stop(): Promise<void>;
}

export interface EmulatorSpec {
  label: string;
  /** Arguments after `node`, given the port and data folder. */
  args(port: number, dataDir: string): string[];
  /** Path (on the emulator) to GET while waiting for it: any HTTP answer means it is up. */
  probePath?: string;
  startTimeoutMs?: number;
}

/** Starts an emulator; retries on another port if the chosen one was taken meanwhile. */
export async function startEmulator(spec: EmulatorSpec): Promise<EmulatorProcess> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const dataDir = await mkdtemp(path.join(os.tmpdir(), `holdfast-${spec.label}-`));
    const port = await freePort();
    try {
      return await startOnce(spec, port, dataDir);
    } catch (err) {
      lastError = err;
      await rm(dataDir, { recursive: true, force: true });
    }
  }
  throw lastError;
}

/** Emulators still running, killed if this process exits without stopping them (a test that timed out). */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

async function startOnce(spec: EmulatorSpec, port: number, dataDir: string): Promise<EmulatorProcess> {
  const child = spawn(process.execPath, spec.args(port, dataDir), {
    cwd: dataDir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  child.once('exit', () => live.delete(child));
  let output = '';
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString('utf8')).slice(-4000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  let stopped = false;
  const stop = async () => {
    if (!stopped) {
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dataDir, { recursive: true, force: true });
    }
  };
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + (spec.startTimeoutMs ?? 30_000);
  try {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(
          `${spec.label} exited (${child.exitCode ?? child.signalCode}) before answering:\n${output}`,
        );
      }
      if (await answers(`${url}${spec.probePath ?? '/'}`)) break;
      if (Date.now() > deadline)
        throw new Error(`${spec.label} did not answer on ${url} in time:\n${output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { port, url, dataDir, child, stop };
}

function answers(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false, timeout: 1_000 }, (res) => {
      res.resume();
      resolve(true);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
  });
}
