import type { FileEntry } from '../../protocol/entry.ts';
import { hashHex } from '../../protocol/hash.ts';
import type { ServerMessageInput } from '../../protocol/messages.ts';
import { locateChunks } from '../chunk-store/chunk-index.ts';
import type { ChunkLocation, ChunkStore } from '../chunk-store/chunk-store.ts';
import type { Db } from '../db/database.ts';
import type { AgentLink, JobMessage } from '../gateway/agent-link.ts';
import type { JobRow, RestoreParams } from '../jobs/job-repo.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { PathSelection } from './path-selection.ts';

/** Bytes in flight to the agent before waiting for its acknowledgement. */
const WINDOW_BYTES = 32 * 1024 * 1024;
/** Blocks read ahead from the chunk store while earlier ones are on the wire. */
const READ_AHEAD = 8;

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
    private readonly source: { kind: 'files' | 'image'; blockSize: number },
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
    for await (const batch of this.deps.manifests.read(this.params.rpId)) {
      const selected = batch.filter((e) => selection.includes(e));
      if (selected.length === 0) continue;
      const hashes = selected.flatMap((e) => (e.type === 'file' ? e.hashes.filter((h) => h !== null) : []));
      const locations = await locateChunks(
        this.deps.db,
        hashes.map((h) => hashHex(h!)),
      );
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

  private async sendBlocks(
    entry: FileEntry,
    locations: Map<string, ChunkLocation>,
    seq: number,
  ): Promise<number> {
    const locs: ChunkLocation[] = [];
    for (const h of entry.hashes) {
      if (!h) continue;
      const loc = locations.get(hashHex(h));
      if (!loc) throw new Error(`block ${hashHex(h)} of ${entry.path} is missing from the chunk store`);
      locs.push(loc);
    }
    // Read ahead: a few reads in flight while earlier blocks are sent.
    const reads: Promise<Buffer>[] = [];
    for (let i = 0; i < locs.length; i++) {
      while (reads.length < READ_AHEAD && i + reads.length < locs.length) {
        const p = this.deps.store.readStored(locs[i + reads.length]!);
        p.catch(() => {});
        reads.push(p);
      }
      const data = await reads.shift()!;
      await this.send(
        { t: 'restore.block', jobId: this.job.id, seq: ++seq, enc: locs[i]!.encoding as 0 | 1, data },
        data.length,
      );
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
