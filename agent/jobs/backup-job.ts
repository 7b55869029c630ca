import { stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { Piscina } from 'piscina';
import type { Entry } from '../../protocol/entry.ts';
import { hashHex } from '../../protocol/hash.ts';
import type { ServerMessage, ServerMessageOf } from '../../protocol/messages.ts';
import { ENTRY_BATCH_BYTES, MAX_BLOCK_SIZE, MAX_FRAME_BYTES } from '../../protocol/version.ts';
import { BlockPipeline } from '../backup/block-pipeline.ts';
import { loadChecksumCache, saveChecksumCache } from '../backup/checksum-cache.ts';
import { blockLayout } from '../backup/content-chunker.ts';
import { type CachedFile, type FileSource, scanFiles } from '../backup/files-scanner.ts';
import { scanImage } from '../backup/image-scanner.ts';
import { measureTree } from '../backup/measure-tree.ts';
import { runScript } from '../consistency/scripts.ts';
import type { Channel } from '../link/server-link.ts';
import type { Throttle } from '../link/throttle.ts';
import { BlockSender } from './block-sender.ts';
import { ProgressReporter } from './progress-reporter.ts';

type Consistency = 'app-consistent' | 'file-consistent' | 'crash-consistent';

/** Walk events, consumed strictly in order. */
type Step =
  | { t: 'block'; result: ReturnType<BlockPipeline['submit']> extends Promise<infer P> ? P : never }
  | { t: 'restart' }
  | { t: 'entry'; entry: Entry; source?: FileSource };

/**
 * Agent side of one backup. The reader (files or image scanner) feeds blocks to the worker
 * pool (hash, zero check, compression); the consumer takes them back in order, offers new
 * hashes to the server, sends what it asks for (block-sender.ts), and sends entries after their
 * blocks. Memory is bounded twice: bytes between read and consumed (pipeline), and bytes
 * offered or sent but not yet acknowledged as stored (sender window).
 */
export class BackupJob {
  private readonly abort = new AbortController();
  private readonly steps: Step[] = [];
  private stepWaiter: (() => void) | undefined;
  private scanning = true;
  private readonly sender: BlockSender;
  private readonly pipeline: BlockPipeline;
  private readonly cache = new Map<string, CachedFile>();
  /** How this datasource's blocks are cut: the checksum cache is only reused for the same. */
  private readonly layout: string;
  private knownHashes = new Set<string>();
  private currentHashes: (Buffer | null)[] = [];
  private entries: Entry[] = [];
  private entriesBytes = 0;
  private readonly progress: ProgressReporter;
  private done: ((rpId: string) => void) | undefined;
  private failed: ((err: Error) => void) | undefined;

  constructor(
    private readonly link: Channel,
    private readonly stateDir: string,
    private readonly start: ServerMessageOf<'backup.start'>,
    shared: { pool: Piscina; throttle: Throttle },
    private readonly log: Logger,
  ) {
    this.pipeline = new BlockPipeline(shared.pool, {
      compress: start.compress,
      // Files are cut by content, so their blocks have no fixed size to place a zero block by.
      zeroBlocks: start.kind === 'image',
      signal: this.abort.signal,
    });
    this.sender = new BlockSender(link, start.jobId, this.abort.signal, (bytes) =>
      shared.throttle.take(bytes, this.abort.signal),
    );
    this.progress = new ProgressReporter(link, start.jobId, log);
    this.layout = blockLayout(start.kind, start.blockSize, MAX_BLOCK_SIZE);
  }

  async run(): Promise<void> {
    const { jobId, datasourceId, path, kind, baseRpId, preScript, postScript } = this.start;
    const finished = new Promise<string>((resolve, reject) => {
      this.done = resolve;
      this.failed = reject;
    });
    finished.catch(() => {}); // observed below; avoids an unhandled rejection while scanning
    const env = { HOLDFAST_JOB_ID: jobId, HOLDFAST_DATASOURCE_ID: datasourceId, HOLDFAST_PATH: path };
    const warnings: string[] = [];
    let preRan = false;
    try {
      if (preScript) {
        await runScript('pre-backup', preScript, env);
        preRan = true;
      }
      const cache = await loadChecksumCache(this.stateDir, datasourceId, baseRpId, this.layout);
      for (const file of cache?.values() ?? [])
        for (const h of file.hashes) if (h) this.knownHashes.add(hashHex(h));
      this.log.info({ path, kind, incremental: cache !== undefined }, 'backup started');
      const consumer = this.consume();
      consumer.catch(() => {});
      const common = {
        submit: async (data: Buffer, previous: Uint8Array | null) => {
          this.progress.scanned(data.length);
          this.push({ t: 'block', result: await this.pipeline.submit(data, previous) });
        },
        allocate: (size: number) => this.pipeline.allocate(size),
        onRestart: () => this.push({ t: 'restart' }),
        signal: this.abort.signal,
      };
      let consistency: Consistency;
      let bytesScanned: number;
      if (kind === 'image') {
        this.progress.setTotal((await stat(path)).size || null);
        const r = await scanImage({
          ...common,
          path,
          blockSize: this.start.blockSize,
          cached: cache?.values().next().value,
          onEntry: async (entry, source) => this.push({ t: 'entry', entry, source }),
        });
        bytesScanned = r.bytesScanned;
        consistency = r.changedWhileRead ? 'crash-consistent' : 'file-consistent';
      } else {
        // The base's size is a good estimate; a first backup measures the tree alongside the walk.
        if (cache) this.progress.setTotal([...cache.values()].reduce((n, f) => n + f.size, 0));
        else
          void measureTree(path).then(
            (total) => this.progress.setTotal(total),
            () => {},
          );
        const r = await scanFiles({
          ...common,
          root: path,
          blockSize: this.start.blockSize,
          cache,
          onEntry: async (entry, source) => this.push({ t: 'entry', entry, source }),
          onWarning: (message) => {
            warnings.push(message);
            this.log.warn({ warning: message }, 'during backup');
          },
        });
        bytesScanned = r.bytesScanned;
        consistency = r.inconsistent.length > 0 ? 'crash-consistent' : 'file-consistent';
      }
      this.scanning = false;
      this.stepWaiter?.();
      await consumer;
      await this.flushEntries();
      await this.sender.drain();
      if (preRan) consistency = 'app-consistent';
      if (postScript) await this.runPost(postScript, env, warnings);
      this.progress.stop(); // no progress frame may follow the end
      await this.link.send({ t: 'backup.end', jobId, bytesScanned, warnings, consistency });
      const rpId = await finished;
      await this.cacheSaved;
      this.log.info({ rpId, bytesScanned, consistency }, 'backup finished');
    } catch (err) {
      const message = (err as Error).message;
      if (postScript && !this.postRan) await this.runPost(postScript, env, warnings);
      if (!this.abort.signal.aborted) {
        this.abort.abort();
        await this.link.send({ t: 'backup.fail', jobId, message }).catch(() => {});
      }
      this.log.error({ err: message }, 'backup failed');
    } finally {
      this.progress.stop();
      this.scanning = false;
      this.stepWaiter?.();
    }
  }

  private postRan = false;
  /** The checksum cache's save, started when the server reported the recovery point. */
  private cacheSaved: Promise<void> = Promise.resolve();

  /** The post script always runs, also when the backup failed; its failure is a warning. */
  private async runPost(script: string, env: Record<string, string>, warnings: string[]): Promise<void> {
    this.postRan = true;
    try {
      await runScript('post-backup', script, env);
    } catch (err) {
      warnings.push((err as Error).message);
      this.log.warn({ err: (err as Error).message }, 'post-backup script failed');
    }
  }

  handle(message: ServerMessage): void {
    switch (message.t) {
      case 'backup.need':
        this.sender.onNeed(message.seq, message.hashes);
        break;
      case 'backup.ack':
        this.sender.onAck(message.stored);
        break;
      case 'backup.done':
        // Saving starts now, before the next frame (maybe the start of the next backup of this
        // datasource, which loads this cache) is handled.
        this.cacheSaved = this.saveCache(message.rpId);
        this.done?.(message.rpId);
        break;
      case 'backup.abort':
        this.cancel(`server aborted the backup: ${message.message}`);
        break;
    }
  }

  cancel(reason: string): void {
    this.progress.stop();
    this.abort.abort(new Error(reason));
    this.failed?.(new Error(reason));
    this.sender.cancel();
    this.stepWaiter?.();
  }

  private push(step: Step): void {
    this.steps.push(step);
    this.stepWaiter?.();
  }

  /** Takes walk events in order: block results become offers, entries follow their blocks. */
  private async consume(): Promise<void> {
    for (;;) {
      if (this.abort.signal.aborted) return;
      const step = this.steps.shift();
      if (!step) {
        if (!this.scanning || this.abort.signal.aborted) return;
        await new Promise<void>((resolve) => {
          this.stepWaiter = resolve;
        });
        this.stepWaiter = undefined;
        continue;
      }
      if (step.t === 'block') {
        const block = await step.result.result();
        this.pipeline.release(block.size);
        if (block.zero) {
          this.currentHashes.push(null);
          continue;
        }
        this.currentHashes.push(block.hash);
        const hex = hashHex(block.hash);
        // Blocks of the base recovery point are this agent's already: no need to offer them.
        if (this.knownHashes.has(hex)) {
          block.recycle();
          continue;
        }
        this.knownHashes.add(hex);
        await this.sender.offer(block);
      } else if (step.t === 'restart') {
        this.currentHashes = [];
      } else {
        const { entry, source } = step;
        if (entry.type === 'file' && source) {
          if (source.kind === 'read') {
            entry.hashes = this.currentHashes;
            this.cache.set(entry.path, { ...source.stamp, hashes: this.currentHashes });
          } else this.cache.set(entry.path, source.cached);
          this.progress.passed(source.kind === 'cached' ? entry.size : 0);
        }
        this.currentHashes = [];
        // MessagePack size, about: 34 bytes a hash, the path, some metadata.
        const bytes = entry.path.length + 64 + (entry.type === 'file' ? 34 * entry.hashes.length : 0);
        if (bytes > MAX_FRAME_BYTES - 1024) {
          throw new Error(
            `${entry.path} has ${entry.type === 'file' ? entry.hashes.length : 0} blocks, more than one manifest frame can carry; use a larger block size`,
          );
        }
        if (this.entriesBytes + bytes > ENTRY_BATCH_BYTES) await this.flushEntries();
        this.entries.push(entry);
        this.entriesBytes += bytes;
        if (this.entries.length >= 500) await this.flushEntries();
      }
    }
  }

  /** Entries go after the offers of their blocks: the server checks every hash they name. */
  private async flushEntries(): Promise<void> {
    await this.sender.flushOffer();
    if (this.entries.length === 0) return;
    const batch = this.entries;
    this.entries = [];
    this.entriesBytes = 0;
    await this.link.send({ t: 'backup.entries', jobId: this.start.jobId, entries: batch });
  }

  private async saveCache(rpId: string): Promise<void> {
    try {
      await saveChecksumCache(this.stateDir, this.start.datasourceId, rpId, this.layout, this.cache);
    } catch (err) {
      // A lost cache only costs a full re-read next time.
      this.log.warn({ err: (err as Error).message }, 'cannot save checksum cache');
    }
  }
}
