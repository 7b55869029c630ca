/**
 * Buffers for blocks, reused. Every block read is moved to a worker thread and back; a new
 * buffer per block made the agent's main thread spend seconds per GiB in garbage collection and
 * in first-touch page faults. A buffer comes back here once nothing reads it any more: when the
 * worker compressed the block (the raw bytes are not sent), or once a raw block was sent or
 * found not needed.
 *
 * Capacities are multiples of STEP so that blocks of nearby sizes (content-defined blocks vary)
 * share them; a block smaller than STEP gets a plain allocation. At most `maxFreeBytes` wait
 * here; more goes to the garbage collector.
 */
const STEP = 64 * 1024;

export class BlockBuffers {
  /** Free ArrayBuffers by capacity. */
  private readonly free = new Map<number, ArrayBuffer[]>();
  private freeBytes = 0;
  /** The ArrayBuffers in `free`: one given back twice must not be handed out twice. */
  private readonly isFree = new WeakSet<ArrayBuffer>();
  /** Buffers handed out by take() and not yet moved: only these may be moved whole. */
  private readonly taken = new WeakSet<Uint8Array>();

  constructor(private readonly maxFreeBytes = 32 * 1024 * 1024) {}

  /** A buffer of `size` bytes (content undefined), owned by the caller until given back. */
  take(size: number): Buffer {
    if (size < STEP) return Buffer.allocUnsafeSlow(size);
    const need = Math.ceil(size / STEP) * STEP;
    // The smallest free one that fits, wasting at most half of it.
    for (let cap = need; cap <= 2 * need; cap += STEP) {
      const ab = this.free.get(cap)?.pop();
      if (!ab) continue;
      this.isFree.delete(ab);
      this.freeBytes -= cap;
      return this.hand(Buffer.from(ab, 0, size));
    }
    return this.hand(Buffer.allocUnsafeSlow(need).subarray(0, size));
  }

  /**
   * Whether `block` may be moved to a worker together with its whole ArrayBuffer: it is a view
   * from the start of a buffer only this pool handed out (any other block must span its buffer).
   */
  movable(block: Uint8Array): boolean {
    return block.byteOffset === 0 && (block.byteLength === block.buffer.byteLength || this.taken.has(block));
  }

  /**
   * Takes back the ArrayBuffer of a block that came back from a worker (and is therefore this
   * thread's alone) once nothing reads it. Buffers of other capacities are left to the GC.
   */
  give(block: Uint8Array): void {
    const ab = block.buffer as ArrayBuffer;
    const cap = ab.byteLength;
    if (cap < STEP || cap % STEP !== 0 || this.freeBytes + cap > this.maxFreeBytes) return;
    if (this.isFree.has(ab)) return;
    let list = this.free.get(cap);
    if (!list) {
      list = [];
      this.free.set(cap, list);
    }
    list.push(ab);
    this.isFree.add(ab);
    this.freeBytes += cap;
  }

  private hand(buf: Buffer): Buffer {
    this.taken.add(buf);
    return buf;
  }
}
