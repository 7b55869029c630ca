import { createRequire } from 'node:module';
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { Piscina } from 'piscina';

/** tsx's loader, resolved the CommonJS way (import.meta.resolve is not available everywhere, e.g. under vitest). */
const TSX_LOADER = pathToFileURL(createRequire(import.meta.url).resolve('tsx')).href;

/**
 * A piscina pool running a TypeScript worker file. Worker threads do not inherit the main
 * thread's tsx loader, so each worker loads it itself.
 */
export function createWorkerPool(workerFile: URL, threads = os.availableParallelism()): Piscina {
  return new Piscina({
    filename: workerFile.href,
    minThreads: threads,
    maxThreads: threads,
    idleTimeout: 60_000,
    execArgv: ['--import', TSX_LOADER],
  });
}
