import { type FileHandle, open } from 'node:fs/promises';
import type { Entry } from '../../protocol/entry.ts';
import { blockHash, hashHex } from '../../protocol/hash.ts';
import { RestoreError } from './restore-writer.ts';

/**
 * Writes an image recovery point back onto a block device, in place. Unlike a file, a device
 * has no holes: zero blocks are written as zeros.
 */
export class DeviceWriter {
  private entry: Extract<Entry, { type: 'file' }> | undefined;
  private next = 0;
  private offset = 0;
  private bytes = 0;

  private constructor(
    private readonly fh: FileHandle,
    private readonly device: string,
    private readonly blockSize: number,
  ) {}

  static async open(device: string, blockSize: number): Promise<DeviceWriter> {
    return new DeviceWriter(await open(device, 'r+'), device, blockSize);
  }

  async beginEntry(entry: Entry): Promise<void> {
    if (entry.type !== 'file' || this.entry)
      throw new RestoreError('an image recovery point holds exactly one file entry');
    this.entry = entry;
    await this.writeZeros();
  }

  /** Whether the image waits for its next block. */
  get wantsBlock(): boolean {
    return this.entry !== undefined && this.next < this.entry.hashes.length;
  }

  async writeBlock(data: Buffer): Promise<void> {
    const e = this.entry;
    const expected = e?.hashes[this.next];
    if (!e || !expected)
      throw new RestoreError(`${this.device}: got more blocks than the recovery point has`);
    if (!blockHash(data).equals(expected)) {
      throw new RestoreError(`${this.device}: block ${this.next} does not match hash ${hashHex(expected)}`);
    }
    await this.write(data);
    await this.writeZeros();
  }

  async finish(): Promise<{ files: number; bytes: number }> {
    if (!this.entry || this.next !== this.entry.hashes.length)
      throw new RestoreError(`${this.device}: restore incomplete`);
    await this.fh.sync();
    await this.fh.close();
    return { files: 1, bytes: this.bytes };
  }

  async abort(): Promise<void> {
    await this.fh.close().catch(() => {});
  }

  private async writeZeros(): Promise<void> {
    const e = this.entry!;
    while (this.next < e.hashes.length && e.hashes[this.next] === null) {
      await this.write(Buffer.alloc(Math.min(this.blockSize, e.size - this.offset)));
    }
  }

  private async write(data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.fh.write(data, done, data.length - done, this.offset + done);
      done += bytesWritten;
    }
    this.offset += data.length;
    this.bytes += data.length;
    this.next += 1;
  }
}
