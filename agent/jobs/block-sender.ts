import { hashHex } from '../../protocol/hash.ts';
import type { HashedBlock } from '../backup/block-pipeline.ts';
import type { Channel } from '../link/server-link.ts';

/** Bytes offered or sent but not yet acknowledged as stored: the agent's credit window. */
const WINDOW_BYTES = 32 * 1024 * 1024;
const OFFER_BLOCKS = 256;
const OFFER_BYTES = 8 * 1024 * 1024;

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
    for (const block of blocks) {
      const hex = hashHex(block.hash);
      if (!need.delete(hex)) {
        this.inflight -= block.data.length;
        block.recycle();
        continue;
      }
      this.sentSizes.push(block.data.length);
      this.sendChain = this.sendChain.then(async () => {
        if (this.signal.aborted) return;
        await this.beforeSend(block.data.length);
        // The frame is encoded (its bytes copied) before send returns: the block is free then.
        await this.link.send({
          t: 'backup.block',
          jobId: this.jobId,
          hash: block.hash,
          enc: block.enc,
          data: block.data,
        });
        block.recycle();
      });
      this.sendChain.catch(() => {});
    }
    this.notify();
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
