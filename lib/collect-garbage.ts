import v8 from 'node:v8';
import vm from 'node:vm';

/*
 * A full, compacting garbage collection on demand, for when a lot of memory was dropped that the
 * collector would otherwise keep for a long while: a quiet main thread allocates too little
 * to start a major collection, so buffers a finished job dropped (e.g. the online backup's
 * pack slots, shared memory that V8 frees only when it collects them) would stay resident.
 * `gc` is exposed to a fresh context only; the process's own global is left as it is.
 */
let gc: ((options?: { type: 'major' | 'minor' }) => void) | undefined;

function exposedGc(): NonNullable<typeof gc> {
  if (!gc) {
    v8.setFlagsFromString('--expose-gc');
    gc = vm.runInNewContext('gc') as NonNullable<typeof gc>;
  }
  return gc;
}

/**
 * A collection of the young generation only (well under a millisecond for a small one): frees
 * the buffers that died young. For a thread that makes many short-lived buffers and few other
 * objects, such as one encrypting blobs (Node's ciphers return a new buffer per call): V8
 * collects when its heap fills or when ~32 MiB of such memory has piled up, and a thread that
 * allocates few objects reaches the second first, so each thread otherwise holds up to ~32 MiB
 * of dead buffers.
 */
export function collectYoungGarbage(): void {
  exposedGc()({ type: 'minor' });
}

export function collectGarbage(): void {
  const gc = exposedGc();
  // Compacting: a heap that grew during a busy spell keeps its pages, each holding a few
  // survivors, and a collection that does not move them gives none back (measured after an
  // online backup: 70 MiB of heap for 27 in use).
  v8.setFlagsFromString('--compact-on-every-full-gc');
  try {
    gc();
  } finally {
    v8.setFlagsFromString('--no-compact-on-every-full-gc');
  }
}
