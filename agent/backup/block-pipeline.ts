import type { Piscina } from 'piscina';
import type { BlockEncodingValue } from '../../protocol/messages.ts';
import { BlockBuffers } from './block-buffers.ts';
import { type BlockTask, type BlockTaskResult, processBlocks, readBlockResults } from './block-worker.ts';

/** A block read from disk whose hash (and compressed form) is being computed, in the pool or in place. */
export interface PendingBlock {
  readonly size: number;
  /** Resolves to the processed block; asking for it sends a half-filled batch on its way. */
  result(): Promise<HashedBlock>;
  /** The block will not be used (its file changed while being read): free its room once processed. */
  discard(): void;
}

export interface HashedBlock {
  hash: Buffer;
  zero: boolean;
  enc: BlockEncodingValue;
  /** The bytes to send: compressed when that helped, otherwise the block as read. */
  data: Buffer;
  size: number;
  /**
   * `data` will not be read again (sent, or not needed): its buffer may be reused. Call at most
   * once, and only when no reference to `data` is kept.
   */
  recycle(): void;
}

export interface PipelineOptions {
  /** zstd-compress blocks that get smaller for it. */
  compress: boolean;
  /** Report all-zero blocks as such (fixed-size image blocks, which restore places by index). */
  zeroBlocks: boolean;
  /** Bytes read but not yet released by the consumer; the reader waits beyond it. */
  maxInflightBytes?: number;
  signal?: AbortSignal;
}

interface BatchItem {
  data: Buffer;
  previous: Uint8Array | null;
  resolve(r: HashedBlock): void;
  reject(e: unknown): void;
}

const BATCH_BYTES = 1024 * 1024;
const BATCH_BLOCKS = 64;
const BATCH_DELAY_MS = 1;

/**
 * Moves blocks from the reader to the worker pool in batches and bounds how many bytes are
 * between "read" and "released by the consumer": the reader waits in `submit` when the
 * bound is reached, which is what keeps the agent's memory flat whatever the dataset size.
 */
export class BlockPipeline {
  private inflight = 0;
  private batch: BatchItem[] = [];
  private batchBytes = 0;
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;

  private readonly maxInflightBytes: number;
  private readonly signal: AbortSignal | undefined;
  private readonly buffers: BlockBuffers;

  constructor(
    private readonly pool: Piscina,
    private readonly options: PipelineOptions,
  ) {
    this.maxInflightBytes = options.maxInflightBytes ?? 16 * 1024 * 1024;
    // No more blocks than that are ever out at once, so no more free buffers are needed.
    this.buffers = new BlockBuffers(this.maxInflightBytes);
    this.signal = options.signal;
    // A cancelled job must not leave its reader parked in submit() forever.
    this.signal?.addEventListener('abort', () => this.wakeUp(), { once: true });
  }

  /** A buffer to read a block into (reused when possible); submit it, or drop it. */
  allocate(size: number): Buffer {
    return this.buffers.take(size);
  }

  /**
   * `previous`: the hash the block's file (or image) had at this position in the base recovery
   * point. A block that still has it is one the server holds and is not sent, so the worker does
   * not compress it (most blocks of a changed large file or image are such blocks).
   */
  async submit(data: Buffer, previous: Uint8Array | null = null): Promise<PendingBlock> {
    // Read once: the block's buffer is moved to a worker (and its length then reads 0 here).
    const size = data.length;
    while (this.inflight > 0 && this.inflight + size > this.maxInflightBytes) {
      this.signal?.throwIfAborted();
      this.dispatch();
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    this.signal?.throwIfAborted();
    this.inflight += size;
    const result = new Promise<HashedBlock>((resolve, reject) => {
      this.batch.push({ data, previous, resolve, reject });
    });
    result.catch(() => {});
    this.batchBytes += size;
    if (this.batchBytes >= BATCH_BYTES || this.batch.length >= BATCH_BLOCKS) this.dispatch();
    else this.timer ??= setTimeout(() => this.dispatch(), BATCH_DELAY_MS);
    // Taking a result does not dispatch a half-filled batch: the reader fills batches faster
    // than the consumer takes them, and the timer sends any tail within a millisecond.
    const take = () => result;
    return {
      size,
      result: take,
      discard: () => {
        void take().then(
          (block) => {
            block.recycle();
            this.release(size);
          },
          () => this.release(size),
        );
      },
    };
  }

  /** The consumer is done with a block's bytes: room for more reading. */
  release(bytes: number): void {
    this.inflight -= bytes;
    this.wakeUp();
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private dispatch(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.batch.length === 0) return;
    const items = this.batch;
    this.batch = [];
    this.batchBytes = 0;
    // Blocks own their ArrayBuffers (the readers allocate them so; any other is copied): they
    // move to a worker and back, and only such buffers are given back for reuse.
    const blocks = items.map((i) => (this.buffers.movable(i.data) ? i.data : copyOf(i.data)));
    const { compress, zeroBlocks } = this.options;
    const task: BlockTask = {
      blocks,
      compress,
      zeroBlocks,
      previous: compress ? packPrevious(items) : undefined,
    };
    // When the pool is behind (a batch already waits for a thread), this thread processes the
    // batch itself: an image backup hashes every block while its reader mostly waits on the
    // disk, and a second pool thread would cost an isolate and its memory. When reading is the
    // slower part (cutting files by content), the pool keeps up and this does not happen.
    if (this.pool.queueSize > 0) {
      let out: BlockTaskResult;
      try {
        out = processBlocks(task);
      } catch (err) {
        rejectAll(items, err);
        return;
      }
      this.settle(items, out);
      return;
    }
    this.pool.run(task, { transferList: task.blocks.map((b) => b.buffer as ArrayBuffer) }).then(
      (out: BlockTaskResult) => this.settle(items, out),
      (err: unknown) => rejectAll(items, err),
    );
  }

  private settle(items: BatchItem[], out: BlockTaskResult): void {
    readBlockResults(out).forEach((r, i) => {
      // The raw bytes are only read again when they are what is sent.
      const rawSent = !r.zero && r.encoded === null;
      if (!rawSent) this.buffers.give(r.block);
      let recycled = !rawSent;
      items[i]!.resolve({
        hash: r.hash,
        zero: r.zero,
        enc: r.enc,
        data: r.encoded ?? (r.zero ? EMPTY : r.block),
        size: r.block.length,
        recycle: () => {
          if (recycled) return;
          recycled = true;
          this.buffers.give(r.block);
        },
      });
    });
  }
}

const EMPTY = Buffer.alloc(0);

function rejectAll(items: BatchItem[], err: unknown): void {
  for (const item of items) item.reject(err);
}

/** The blocks' previous hashes back to back (32 zero bytes where there is none), or none at all. */
function packPrevious(items: { previous: Uint8Array | null }[]): Uint8Array | undefined {
  if (!items.some((i) => i.previous)) return undefined;
  const packed = new Uint8Array(32 * items.length);
  items.forEach((i, n) => {
    if (i.previous) packed.set(i.previous, 32 * n);
  });
  return packed;
}

/** A copy that spans its own ArrayBuffer, for a block that does not (safe to move). */
function copyOf(data: Buffer): Uint8Array {
  const copy = new Uint8Array(data.byteLength);
  copy.set(data);
  return copy;
}
