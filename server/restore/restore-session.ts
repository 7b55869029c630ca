import type { FileEntry } from '../../protocol/entry.ts';
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

/** A block by hash: a function that reads it (as it goes on the wire), or undefined when absent. */
type BlockReader = (hex: string) => (() => Promise<{ enc: 0 | 1; data: Buffer }>) | undefined;

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
 * entry, its blocks in order, as stored (compressed blocks stay compressed on the wire). Zero
 * blocks are not sent. The agent verifies every block against the hash in the entry before
 * writing it and acknowledges frames as they are written, which bounds what either side buffers.
 */
export class RestoreSession {
  private acked = 0;
  private readonly sentBytes = new Map<number, number>();
  private inflight = 0;
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
    let seq = 0;
    const vault = this.source.vault;
    const batches = vault ? vault.entries() : this.deps.manifests.read(this.params.rpId);
    for await (const batch of batches) {
      const selected = batch.filter((e) => selection.includes(e));
      if (selected.length === 0) continue;
      const hashes = selected.flatMap((e) => (e.type === 'file' ? e.hashes.filter((h) => h !== null) : []));
      const hexes = hashes.map((h) => hashHex(h!));
      const locations: BlockReader = vault
        ? vaultReader(vault, await vault.locate(hexes))
        : storeReader(this.deps.store, await locateChunks(this.deps.db, hexes));
      let pendingEntries: typeof selected = [];
      for (const entry of selected) {
        if (!this.result) return;
        pendingEntries.push(entry);
        if (entry.type !== 'file' || entry.hashes.every((h) => h === null)) continue;
        // Entries up to and including this file, then its blocks.
        await this.send({ t: 'restore.entries', jobId: this.job.id, seq: ++seq, entries: pendingEntries }, 0);
        pendingEntries = [];
        seq = await this.sendBlocks(entry, locations, seq);
      }
      if (pendingEntries.length > 0) {
        await this.send({ t: 'restore.entries', jobId: this.job.id, seq: ++seq, entries: pendingEntries }, 0);
      }
    }
    const unmatched = selection.unmatched();
    if (unmatched.length > 0)
      throw new Error(`not in recovery point ${this.params.rpId}: ${unmatched.join(', ')}`);
    await this.link.send({ t: 'restore.end', jobId: this.job.id, seq: ++seq });
  }

  private async sendBlocks(entry: FileEntry, reader: BlockReader, seq: number): Promise<number> {
    const reads: (() => Promise<{ enc: 0 | 1; data: Buffer }>)[] = [];
    for (const h of entry.hashes) {
      if (!h) continue;
      const read = reader(hashHex(h));
      if (!read)
        throw new Error(
          `block ${hashHex(h)} of ${entry.path} is missing from the ${this.source.vault ? 'vault' : 'chunk store'}`,
        );
      reads.push(read);
    }
    // Read ahead: a few reads in flight while earlier blocks are sent.
    const pending: Promise<{ enc: 0 | 1; data: Buffer }>[] = [];
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
    await this.link.send(message);
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
