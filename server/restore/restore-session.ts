import type { Entry, FileEntry } from '../../protocol/entry.ts';
import { hashHex } from '../../protocol/hash.ts';
import type { ServerMessageInput } from '../../protocol/messages.ts';
import { locateChunks } from '../chunk-store/chunk-index.ts';
import type { ChunkLocation, ChunkStore } from '../chunk-store/chunk-store.ts';
import type { Db } from '../db/database.ts';
import type { AgentLink, JobMessage } from '../gateway/agent-link.ts';
import type { JobRow, RestoreParams } from '../jobs/job-repo.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import type { BlobRow } from '../vault/vault-mirror.ts';
import type { VaultPointReader } from '../vault/vault-restore.ts';
import { PathSelection } from './path-selection.ts';

/** Bytes in flight to the agent before waiting for its acknowledgement. */
const WINDOW_BYTES = 32 * 1024 * 1024;
/** Blocks read ahead from the chunk store while earlier ones are on the wire. */
const READ_AHEAD = 8;

/**
 * Files up to this size travel whole inside their entries frame (protocol 2), together up to
 * about SMALL_FILES_FRAME_BYTES a frame: a tree of small files is then a frame per few hundred
 * files instead of two per file, each of which cost both sides a decode, a queue step and a
 * socket write.
 */
const SMALL_FILE_BYTES = 256 * 1024;
const SMALL_FILES_FRAME_BYTES = 1024 * 1024;
/** Room in a frame beyond its blocks' bytes: the entries and the MessagePack around the blocks. */
const FRAME_SLACK = 256 * 1024;

/** A block as it goes on the wire. */
type Block = { enc: 0 | 1; data: Buffer };
type BlockRead = () => Promise<Block>;
/** A block by hash: a function that reads it (as it goes on the wire), or undefined when absent. */
type BlockReader = (hex: string) => BlockRead | undefined;

/** Runs the reads, READ_AHEAD at a time; their blocks in order. */
async function readInOrder(reads: BlockRead[]): Promise<Block[]> {
  const blocks: Block[] = new Array(reads.length);
  let next = 0;
  const reader = async () => {
    while (next < reads.length) {
      const i = next++;
      blocks[i] = await reads[i]!();
    }
  };
  await Promise.all(Array.from({ length: Math.min(READ_AHEAD, reads.length) }, reader));
  return blocks;
}

function storeReader(store: ChunkStore, locations: Map<string, ChunkLocation>): BlockReader {
  return (hex) => {
    const loc = locations.get(hex);
    if (!loc) return undefined;
    return async () => ({ enc: loc.encoding as 0 | 1, data: await store.readStored(loc) });
  };
}

/** Vault blocks are decrypted and checked here, and sent raw (the agent checks them again). */
function vaultReader(vault: VaultPointReader, locations: Map<string, BlobRow>): BlockReader {
  return (hex) => {
    const loc = locations.get(hex);
    if (!loc) return undefined;
    return async () => ({ enc: 0, data: vault.decode(loc, await vault.readStored(loc)) });
  };
}

type Outcome = { ok: true; files: number; bytes: number } | { ok: false; error: string };

/**
 * Server side of one restore: streams the selected manifest entries and, after each file
 * entry, its blocks in order, as stored (compressed blocks stay compressed on the wire); small
 * files' blocks ride in their entries frame. Zero blocks are not sent. The agent verifies every
 * block against the hash in the entry before writing it and acknowledges frames as they are
 * written, which bounds what either side buffers.
 */
export class RestoreSession {
  private acked = 0;
  private readonly sentBytes = new Map<number, number>();
  private inflight = 0;
  private frameBuffer = Buffer.alloc(0);
  /** Block bytes put on the wire (as stored: compressed blocks stay compressed). */
  bytesSent = 0;
  private ackWaiter: (() => void) | undefined;
  private ready: (() => void) | undefined;
  private result: ((o: Outcome) => void) | undefined;

  constructor(
    private readonly deps: { db: Db; store: ChunkStore; manifests: ManifestStore },
    private readonly link: AgentLink,
    private readonly job: JobRow,
    private readonly params: RestoreParams,
    /** `vault`: a vault point, read from the vault (entries from its trees, blocks from its packs). */
    private readonly source: { kind: 'files' | 'image'; blockSize: number; vault?: VaultPointReader },
  ) {}

  async run(): Promise<Outcome> {
    const outcome = new Promise<Outcome>((resolve) => {
      this.result = resolve;
    });
    const release = this.link.attach(this.job.id, async (m) => this.onMessage(m));
    const unClose = this.link.onClose((reason) =>
      this.finish({ ok: false, error: `agent disconnected: ${reason}` }),
    );
    try {
      const isReady = new Promise<void>((resolve) => {
        this.ready = resolve;
      });
      await this.link.send({
        t: 'restore.start',
        jobId: this.job.id,
        target: this.params.target,
        kind: this.source.kind,
        blockSize: this.source.blockSize,
      });
      await Promise.race([isReady, outcome]);
      if (this.result)
        await this.stream().catch((err: Error) => this.finish({ ok: false, error: err.message }));
      const result = await outcome;
      if (!result.ok)
        await this.link
          .send({ t: 'restore.abort', jobId: this.job.id, message: result.error })
          .catch(() => {});
      return result;
    } finally {
      release();
      unClose();
      this.ackWaiter?.();
    }
  }

  private async stream(): Promise<void> {
    const selection = new PathSelection(this.params.paths);
    const batching = this.link.version >= 2;
    let seq = 0;
    const vault = this.source.vault;
    const batches = vault ? vault.entries() : this.deps.manifests.read(this.params.rpId);
    for await (const batch of batches) {
      const selected = batch.filter((e) => selection.includes(e));
      if (selected.length === 0) continue;
      const hashes = selected.flatMap((e) => (e.type === 'file' ? e.hashes.filter((h) => h !== null) : []));
      const hexes = hashes.map((h) => hashHex(h!));
      const reader: BlockReader = vault
        ? vaultReader(vault, await vault.locate(hexes))
        : storeReader(this.deps.store, await locateChunks(this.deps.db, hexes));
      // Entries not sent yet, and the reads of the small files' blocks that go with them.
      let entries: Entry[] = [];
      let reads: BlockRead[] = [];
      let smallBytes = 0;
      const flush = async () => {
        const blocks = await readInOrder(reads);
        const bytes = blocks.reduce((n, b) => n + b.data.length, 0);
        const message = { t: 'restore.entries' as const, jobId: this.job.id, seq: ++seq, entries };
        await this.send(blocks.length > 0 ? { ...message, blocks } : message, bytes);
        entries = [];
        reads = [];
        smallBytes = 0;
      };
      for (const entry of selected) {
        if (!this.result) return;
        entries.push(entry);
        if (entry.type !== 'file' || entry.hashes.every((h) => h === null)) continue;
        const fileReads = this.blockReads(entry, reader);
        if (batching && entry.size <= SMALL_FILE_BYTES) {
          reads.push(...fileReads);
          smallBytes += entry.size;
          if (smallBytes >= SMALL_FILES_FRAME_BYTES) await flush();
          continue;
        }
        // Entries up to and including this file, then its blocks, a frame each.
        await flush();
        seq = await this.sendBlocks(fileReads, seq);
      }
      if (entries.length > 0) await flush();
    }
    const unmatched = selection.unmatched();
    if (unmatched.length > 0)
      throw new Error(`not in recovery point ${this.params.rpId}: ${unmatched.join(', ')}`);
    await this.link.send({ t: 'restore.end', jobId: this.job.id, seq: ++seq });
  }

  /** A file's block reads, in order (zero blocks are not sent). */
  private blockReads(entry: FileEntry, reader: BlockReader): BlockRead[] {
    const reads: BlockRead[] = [];
    for (const h of entry.hashes) {
      if (!h) continue;
      const read = reader(hashHex(h));
      if (!read)
        throw new Error(
          `block ${hashHex(h)} of ${entry.path} is missing from the ${this.source.vault ? 'vault' : 'chunk store'}`,
        );
      reads.push(read);
    }
    return reads;
  }

  private async sendBlocks(reads: BlockRead[], seq: number): Promise<number> {
    // Read ahead: a few reads in flight while earlier blocks are sent.
    const pending: Promise<Block>[] = [];
    for (let i = 0; i < reads.length; i++) {
      while (pending.length < READ_AHEAD && i + pending.length < reads.length) {
        const p = reads[i + pending.length]!();
        p.catch(() => {});
        pending.push(p);
      }
      const { enc, data } = await pending.shift()!;
      await this.send({ t: 'restore.block', jobId: this.job.id, seq: ++seq, enc, data }, data.length);
    }
    return seq;
  }

  private async send(message: ServerMessageInput & { seq: number }, bytes: number): Promise<void> {
    while (this.result && this.inflight > 0 && this.inflight + bytes > WINDOW_BYTES) {
      await new Promise<void>((resolve) => {
        this.ackWaiter = resolve;
      });
    }
    if (!this.result) return;
    this.inflight += bytes;
    this.bytesSent += bytes;
    this.sentBytes.set(message.seq, bytes);
    // Frames are sent one at a time, each encoded into the buffer the last one was written from.
    if (this.frameBuffer.length < bytes + FRAME_SLACK)
      this.frameBuffer = Buffer.allocUnsafeSlow(bytes + FRAME_SLACK);
    await this.link.send(message, this.frameBuffer);
  }

  private onAck(seq: number): void {
    for (let s = this.acked + 1; s <= seq; s++) {
      this.inflight -= this.sentBytes.get(s) ?? 0;
      this.sentBytes.delete(s);
    }
    this.acked = Math.max(this.acked, seq);
    this.ackWaiter?.();
  }

  private async onMessage(m: JobMessage): Promise<void> {
    switch (m.t) {
      case 'restore.ready':
        this.ready?.();
        return;
      case 'restore.ack':
        return this.onAck(m.seq);
      case 'restore.done':
        return this.finish({ ok: true, files: m.files, bytes: m.bytes });
      case 'restore.fail':
        return this.finish({ ok: false, error: m.message });
      default:
        return this.finish({ ok: false, error: `agent sent "${m.t}" during a restore` });
    }
  }

  private finish(o: Outcome): void {
    this.result?.(o);
    this.result = undefined;
    this.ackWaiter?.();
  }
}
