import { createRequire } from 'node:module';
import { collectGarbage } from './collect-garbage.ts';

/*
 * Giving memory back once a process is idle again. What a backup, restore or online backup
 * allocates is mostly buffers (blocks, frames, packs), and their memory comes from glibc's
 * malloc, which keeps what is freed in its arenas for the next allocation instead of returning
 * it: after a busy spell the server stayed 80-150 MiB above its idle size for as long as it
 * was idle (docs/PERFORMANCE.md). glibc's malloc_trim(0) returns every whole free page of
 * every arena (glibc >= 2.8); Node has no binding for it, so it is called through koffi's
 * FFI. Elsewhere (musl, macOS) nothing is done: their allocators do not keep memory this way.
 *
 * A release follows the end of the last running job (`beginBusy`) and the end of a pool thread
 * (what the thread held, such as the vault's pack slots, is free only then): a full, compacting
 * garbage collection first (dead buffers are freed only when V8 collects them), then the trim;
 * together ~10-50 ms on an idle server.
 */

/** Quiet time before memory is released, so that jobs ending together cost one release. */
const RELEASE_DELAY_MS = 250;
/**
 * After a pool thread ends: the pool reports the end before the thread's own heap is gone, and
 * what it held (such as a vault pack slot it was lent) is free only then.
 */
export const THREAD_END_DELAY_MS = 1_000;

let busy = 0;
let timer: NodeJS.Timeout | undefined;
/** When the pending release runs (ms since the epoch). */
let due = 0;

/**
 * Marks the start of work (a job); the function returned marks its end (once, however often it
 * is called). Work that starts cancels a pending release (it would take that memory again), and
 * the end of the last work schedules one.
 */
export function beginBusy(): () => void {
  busy += 1;
  clearTimeout(timer);
  timer = undefined;
  let ended = false;
  return () => {
    if (ended) return;
    ended = true;
    busy -= 1;
    if (busy === 0) releaseMemorySoon();
  };
}

/** Releases memory `delayMs` from now, or later if a release is already due later. */
export function releaseMemorySoon(delayMs = RELEASE_DELAY_MS): void {
  const at = Date.now() + delayMs;
  if (timer && due >= at) return;
  clearTimeout(timer);
  due = at;
  timer = setTimeout(() => {
    timer = undefined;
    try {
      releaseMemory();
    } catch {
      // Only memory that stays resident: never a reason to disturb the process.
    }
  }, delayMs);
  timer.unref();
}

/** Collects garbage and returns free malloc pages to the system; whether any were returned. */
export function releaseMemory(): boolean {
  collectGarbage();
  return mallocTrim();
}

let trim: ((pad: number) => number) | null | undefined;

function mallocTrim(): boolean {
  if (trim === undefined) trim = loadMallocTrim();
  return trim !== null && trim(0) === 1;
}

function loadMallocTrim(): ((pad: number) => number) | null {
  if (process.platform !== 'linux') return null;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
    // Only glibc is libc.so.6 and has malloc_trim; on musl this fails and nothing is done.
    return koffi.load('libc.so.6').func('int malloc_trim(size_t pad)') as (pad: number) => number;
  } catch {
    return null;
  }
}
