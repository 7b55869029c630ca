import { hashHex } from '../../protocol/hash.ts';
import type { HashedBlock } from '../backup/block-pipeline.ts';
import type { Channel } from '../link/server-link.ts';

/** Bytes offered or sent but not yet acknowledged as stored: the agent's credit window. */
const WINDOW_BYTES = 32 * 1024 * 1024;
const OFFER_BLOCKS = 256;
const OFFER_BYTES = 8 * 1024 * 1024;
/**
 * Protocol 2: blocks asked for go several to a frame, up to about this many bytes (a tree of
 * small files is otherwise a frame, a decode and a socket write per block on both sides). No
 * larger than a block of the default size, so a throttled link still moves in small steps.
 */
const FRAME_BYTES = 256 * 1024;
/** Room in a frame for the MessagePack around each block (map, keys, hash, encoding, lengths). */
const FRAME_OVERHEAD_PER_BLOCK = 96;
const FRAME_OVERHEAD = 256;

/**
 * The agent's half of the block exchange: offers hashes in batches, sends the blocks the server
 * asks for, and frees window space as the server acknowledges durable blocks. A waiting
 * `offer` is the backpressure that slows the reader when the server or the link is slower.
 */
export class BlockSender {
  private seq = 0;
  private batch: HashedBlock[] = [];
  private batchBytes = 0;
  private readonly offered = new Map<number, HashedBlock[]>();
  private inflight = 0;
  private readonly sentSizes: number[] = [];
  private acked = 0;
  private sendChain: Promise<void> = Promise.resolve();
  /** Block frames are encoded here, one at a time (each is written before the next is encoded). */
  private frameBuffer = Buffer.alloc(0);
  private wake: (() => void) | undefined;

  constructor(
    private readonly link: Channel,
    private readonly jobId: string,
    private readonly signal: AbortSignal,
    private readonly beforeSend: (bytes: number) => Promise<void> = async () => {},
  ) {}

  async offer(block: HashedBlock): Promise<void> {
    this.batch.push(block);
    this.batchBytes += block.data.length;
    this.inflight += block.data.length;
    if (this.batch.length >= OFFER_BLOCKS || this.batchBytes >= OFFER_BYTES) await this.flushOffer();
    await this.waitFor(() => this.inflight < WINDOW_BYTES);
  }

  async flushOffer(): Promise<void> {
    if (this.batch.length === 0) return;
    const seq = ++this.seq;
    const blocks = this.batch;
    this.offered.set(seq, blocks);
    this.batch = [];
    this.batchBytes = 0;
    await this.link.send({ t: 'backup.offer', jobId: this.jobId, seq, hashes: blocks.map((b) => b.hash) });
  }

  /** Every offer answered and every requested block handed to the link. */
  async drain(): Promise<void> {
    await this.flushOffer();
    await this.waitFor(() => this.offered.size === 0);
    await this.sendChain;
  }

  onNeed(seq: number, hashes: Uint8Array[]): void {
    const blocks = this.offered.get(seq);
    if (!blocks) return;
    this.offered.delete(seq);
    const need = new Set(hashes.map((h) => hashHex(h)));
    let frame: HashedBlock[] = [];
    let frameBytes = 0;
    for (const block of blocks) {
      const hex = hashHex(block.hash);
      if (!need.delete(hex)) {
        this.inflight -= block.data.length;
        block.recycle();
        continue;
      }
      this.sentSizes.push(block.data.length);
      frame.push(block);
      frameBytes += block.data.length;
      // Protocol 1: a frame per block.
      if (frameBytes >= FRAME_BYTES || this.link.version < 2) {
        this.sendFrame(frame, frameBytes);
        frame = [];
        frameBytes = 0;
      }
    }
    if (frame.length > 0) this.sendFrame(frame, frameBytes);
    this.notify();
  }

  /** Queues blocks for the link, after those queued before. */
  private sendFrame(blocks: HashedBlock[], bytes: number): void {
    this.sendChain = this.sendChain.then(async () => {
      if (this.signal.aborted) return;
      await this.beforeSend(bytes);
      // The frame is encoded (its bytes copied) before send returns: the blocks are free then.
      const jobId = this.jobId;
      const [one] = blocks;
      const room = bytes + FRAME_OVERHEAD + FRAME_OVERHEAD_PER_BLOCK * blocks.length;
      if (this.frameBuffer.length < room) this.frameBuffer = Buffer.allocUnsafeSlow(room);
      await this.link.send(
        blocks.length === 1
          ? { t: 'backup.block', jobId, hash: one!.hash, enc: one!.enc, data: one!.data }
          : { t: 'backup.blocks', jobId, blocks: blocks.map(({ hash, enc, data }) => ({ hash, enc, data })) },
        this.frameBuffer,
      );
      for (const b of blocks) b.recycle();
    });
    this.sendChain.catch(() => {});
  }

  onAck(stored: number): void {
    while (this.acked < stored && this.sentSizes.length > 0) {
      this.inflight -= this.sentSizes.shift()!;
      this.acked += 1;
    }
    this.notify();
  }

  cancel(): void {
    this.notify();
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private async waitFor(ready: () => boolean): Promise<void> {
    while (!ready()) {
      if (this.signal.aborted) throw new Error('backup cancelled');
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    if (this.signal.aborted) throw new Error('backup cancelled');
  }
}
