import v8 from 'node:v8';
import vm from 'node:vm';

/*
 * A full garbage collection on demand, for the few places that drop a lot of memory the
 * collector would otherwise keep for a long while: a quiet main thread allocates too little
 * to start a major collection, so buffers a finished job dropped (e.g. the online backup's
 * pack slots, shared memory that V8 frees only when it collects them) would stay resident.
 * `gc` is exposed to a fresh context only; the process's own global is left as it is.
 */
let gc: (() => void) | undefined;

export function collectGarbage(): void {
  if (!gc) {
    v8.setFlagsFromString('--expose-gc');
    gc = vm.runInNewContext('gc') as () => void;
  }
  gc();
}
