import { createRequire } from 'node:module';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { releaseMemorySoon, THREAD_END_DELAY_MS } from './release-memory.ts';

/*
 * Worker pools for TypeScript worker files, without a TypeScript loader in the threads.
 *
 * Worker threads do not inherit the main thread's tsx loader, and loading it in each thread
 * costs ~30 MiB of resident memory per thread (its hooks thread, esbuild). Instead, the worker
 * file and the project files it imports are bundled once per process, in memory, into one
 * CommonJS module (esbuild, which tsx already brings; packages stay external). Every thread runs
 * the plain-JavaScript pool-worker.cjs, which evaluates that bundle and resolves the packages
 * from the worker file's own folder, as an import there would.
 */

interface Esbuild {
  buildSync(options: Record<string, unknown>): { outputFiles?: { text: string }[] };
  stop(): unknown;
}

const require = createRequire(import.meta.url);
const POOL_WORKER = fileURLToPath(new URL('./pool-worker.cjs', import.meta.url));
const bundles = new Map<string, string>();

/** The worker file with the project files it imports, as one CommonJS module (cached per process). */
export function bundleWorker(workerFile: URL): string {
  const file = fileURLToPath(workerFile);
  let code = bundles.get(file);
  if (code === undefined) {
    // esbuild as tsx (a runtime dependency) resolves it.
    const esbuild = createRequire(require.resolve('tsx'))('esbuild') as Esbuild;
    try {
      const result = esbuild.buildSync({
        entryPoints: [file],
        bundle: true,
        platform: 'node',
        format: 'cjs',
        target: 'node20',
        packages: 'external',
        write: false,
        logLevel: 'silent',
      });
      code = result.outputFiles?.[0]?.text;
      if (code === undefined) throw new Error(`bundling ${file} produced no output`);
    } finally {
      // The synchronous API keeps a helper thread (and an esbuild process) otherwise.
      esbuild.stop();
    }
    bundles.set(file, code);
  }
  return code;
}

export interface WorkerPoolOptions {
  /** Threads kept while idle (default: none; threads start with the first tasks). */
  minThreads?: number;
  /** An idle thread above minThreads ends after this long (default 10 s). */
  idleTimeoutMs?: number;
}

/**
 * A piscina pool running a TypeScript worker file (its default export). Threads start when
 * tasks come and end when idle, so an idle process holds none.
 */
export function createWorkerPool(
  workerFile: URL,
  threads = os.availableParallelism(),
  options: WorkerPoolOptions = {},
): Piscina {
  const pool = new Piscina({
    filename: POOL_WORKER,
    workerData: { holdfastWorker: { file: fileURLToPath(workerFile), code: bundleWorker(workerFile) } },
    minThreads: Math.min(options.minThreads ?? 0, threads),
    maxThreads: threads,
    idleTimeout: options.idleTimeoutMs ?? 10_000,
    // Not the process's flags: those may load tsx into every thread (node --import tsx).
    execArgv: [],
  });
  // What an ended thread held is free only now (its buffers, shared memory it was lent).
  pool.on('workerDestroy', () => releaseMemorySoon(THREAD_END_DELAY_MS));
  return pool;
}
