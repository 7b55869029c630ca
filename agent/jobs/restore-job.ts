import type { Logger } from 'pino';
import type { ServerMessage, ServerMessageOf } from '../../protocol/messages.ts';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { BlockDecoder } from '../../protocol/block-codec.ts';
import type { Entry } from '../../protocol/entry.ts';
import { DeviceWriter } from '../restore/device-writer.ts';
import { RestoreWriter } from '../restore/restore-writer.ts';
import type { Channel } from '../link/server-link.ts';

/** Acknowledge written frames at least this often, so the server's window keeps moving. */
const ACK_EVERY = 8;

/**
 * Agent side of one restore: frames are applied strictly in order (entries, then the blocks of
 * each file), each block verified against its hash by the writer, and acknowledged once written.
 */
export class RestoreJob {
  private writer: RestoreWriter | DeviceWriter | undefined;
  /** An image restored to a file is written as that file's name inside its folder. */
  private imageName: string | undefined;
  private queue: Promise<void> = Promise.resolve();
  private queued = 0;
  private ackedSeq = 0;
  /** The newest frame written, and whether an acknowledgement is already due soon. */
  private writtenSeq = 0;
  private ackSoon = false;
  private failed = false;
  private ended = false;
  /** Blocks are applied one at a time, each written before the next is decoded. */
  private readonly decoder = new BlockDecoder();

  constructor(
    private readonly link: Channel,
    private readonly start: ServerMessageOf<'restore.start'>,
    private readonly log: Logger,
    private readonly onEnd: () => void,
  ) {}

  run(): void {
    this.enqueue(async () => {
      this.writer = await this.openWriter();
      this.log.info({ target: this.start.target }, 'restore started');
      await this.link.send({ t: 'restore.ready', jobId: this.start.jobId });
    });
  }

  handle(message: ServerMessage): void {
    switch (message.t) {
      case 'restore.entries':
        this.enqueue(async () => {
          const writer = this.writer!;
          const blocks = message.blocks ?? [];
          let next = 0;
          for (const entry of message.entries) {
            await writer.beginEntry(this.placed(entry));
            // The blocks that came with the entries go to their files; the rest follow.
            while (next < blocks.length && writer.wantsBlock) {
              const { enc, data } = blocks[next++]!;
              await writer.writeBlock(this.decoder.decode(enc, data));
            }
          }
          if (next < blocks.length)
            throw new Error(
              `restore frame ${message.seq} holds ${blocks.length - next} blocks no file takes`,
            );
          this.ack(message.seq);
        });
        break;
      case 'restore.block':
        this.enqueue(async () => {
          await this.writer!.writeBlock(this.decoder.decode(message.enc, message.data));
          this.ack(message.seq);
        });
        break;
      case 'restore.end':
        this.enqueue(async () => {
          const { files, bytes } = await this.writer!.finish();
          this.ended = true; // no acknowledgement after restore.done
          await this.link.send({ t: 'restore.done', jobId: this.start.jobId, files, bytes });
          this.log.info({ files, bytes }, 'restore finished');
          this.onEnd();
        });
        break;
      case 'restore.abort':
        this.cancel(message.message);
        break;
    }
  }

  private async openWriter(): Promise<RestoreWriter | DeviceWriter> {
    const { target, kind, blockSize } = this.start;
    if (kind === 'files') return RestoreWriter.open(target, blockSize);
    if (!path.isAbsolute(target))
      throw new Error(`image restore target must be an absolute path, got "${target}"`);
    const st = await stat(target).catch(() => undefined);
    if (st?.isBlockDevice()) return DeviceWriter.open(target, blockSize);
    if (st?.isDirectory())
      throw new Error(`image restore target ${target} is a folder; name the image file to write`);
    this.imageName = path.basename(target);
    return RestoreWriter.open(path.dirname(target), blockSize);
  }

  private placed(entry: Entry): Entry {
    return this.imageName ? { ...entry, path: this.imageName } : entry;
  }

  cancel(reason: string): void {
    if (this.failed) return;
    this.failed = true;
    this.log.warn({ reason }, 'restore cancelled');
    // Behind the step being written, never under it.
    this.queue = this.queue.then(() => this.writer?.abort());
    this.onEnd();
  }

  private enqueue(step: () => Promise<void>): void {
    this.queued += 1;
    this.queue = this.queue.then(async () => {
      this.queued -= 1;
      if (this.failed) return;
      try {
        await step();
      } catch (err) {
        const message = (err as Error).message;
        this.failed = true;
        this.log.error({ err: message }, 'restore failed');
        await this.writer?.abort();
        await this.link.send({ t: 'restore.fail', jobId: this.start.jobId, message }).catch(() => {});
        this.onEnd();
      }
    });
  }

  /**
   * Acknowledges every few frames, and soon after the queue runs empty so the server's window
   * never stalls: "soon" is once the frames already received are applied, so an agent that
   * keeps up sends one acknowledgement per burst, not one per frame. Not awaited: a link that
   * fails ends the job through its close.
   */
  private ack(seq: number): void {
    this.writtenSeq = seq;
    if (seq - this.ackedSeq >= ACK_EVERY) this.sendAck();
    else if (this.queued === 0 && !this.ackSoon) {
      this.ackSoon = true;
      setImmediate(() => {
        this.ackSoon = false;
        if (!this.failed && !this.ended) this.sendAck();
      });
    }
  }

  private sendAck(): void {
    if (this.writtenSeq <= this.ackedSeq) return;
    this.ackedSeq = this.writtenSeq;
    this.link.send({ t: 'restore.ack', jobId: this.start.jobId, seq: this.ackedSeq }).catch(() => {});
  }
}
