import { createHash } from 'node:crypto';
import type { Entry } from '../../protocol/entry.ts';
import {
  type CachedFile,
  type FileSource,
  type ScanOptions,
  type ScanResult,
  scanFiles,
} from './files-scanner.ts';

/**
 * Test stand-in for the backup job's consumer (agent/jobs/backup-job.ts): it takes the blocks
 * `scanFiles` submits, hashes them itself (SHA-256; file blocks have no null hashes, the job only
 * makes them for fixed-size image blocks) and gives each
 * file entry read now the hashes of the blocks submitted since the previous entry, forgetting
 * them on `onRestart`. It also builds the checksum cache the way the job does, so a test can
 * feed it to the next scan.
 */
export interface CollectedScan {
  /** 'block <length>', 'restart' and 'entry <path>', in call order. */
  events: string[];
  /** Entries as the consumer completes them: file entries carry their hashes. */
  entries: Entry[];
  sources: Map<string, FileSource | undefined>;
  /** Every submitted block, abandoned ones included. */
  blocks: Buffer[];
  /** What each block was submitted with as the cached hash of its position in its file. */
  previous: (Uint8Array | null)[];
  /** Blocks by hex hash, as a chunk store would keep them. */
  store: Map<string, Buffer>;
  warnings: string[];
  restarts: number;
  /** What the job would save as the checksum cache after this scan. */
  cache: Map<string, CachedFile>;
}

export interface CollectHooks {
  /** Runs after a submitted block was collected (a test's chance to disturb the file). */
  afterSubmit?(data: Buffer, run: CollectedScan): Promise<void>;
  /** Runs after the collector handled an entry (e.g. to fail the scan from a callback). */
  afterEntry?(entry: Entry): Promise<void>;
}

export const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** Scan options without the callbacks the collector provides. */
export type CollectOptions = Omit<ScanOptions, 'submit' | 'onRestart' | 'onEntry' | 'onWarning'>;

export async function collectScan(
  opts: CollectOptions,
  hooks: CollectHooks = {},
): Promise<{ run: CollectedScan; result: ScanResult }> {
  const run: CollectedScan = {
    events: [],
    entries: [],
    sources: new Map(),
    blocks: [],
    previous: [],
    store: new Map(),
    warnings: [],
    restarts: 0,
    cache: new Map(),
  };
  let pending: Buffer[] = [];
  const result = await scanFiles({
    ...opts,
    submit: async (data, previous) => {
      run.events.push(`block ${data.length}`);
      run.blocks.push(data);
      run.previous.push(previous);
      pending.push(data);
      await hooks.afterSubmit?.(data, run);
    },
    onRestart: () => {
      run.events.push('restart');
      run.restarts += 1;
      pending = [];
    },
    onEntry: async (entry, source) => {
      run.events.push(`entry ${entry.path}`);
      run.sources.set(entry.path, source);
      const blocks = pending;
      pending = [];
      if (entry.type === 'file' && source?.kind === 'read') {
        if (entry.hashes.length !== 0) throw new Error(`${entry.path}: a file read now must have no hashes`);
        const total = blocks.reduce((n, b) => n + b.length, 0);
        if (total !== entry.size)
          throw new Error(`${entry.path}: blocks add up to ${total} bytes, the entry says ${entry.size}`);
        const hashes = blocks.map((b) => {
          const h = sha256(b);
          run.store.set(h.toString('hex'), b);
          return h;
        });
        const done = { ...entry, hashes };
        run.entries.push(done);
        run.cache.set(entry.path, { ...source.stamp, hashes });
      } else {
        if (blocks.length > 0) throw new Error(`${entry.path}: ${blocks.length} blocks but nothing was read`);
        if (entry.type === 'file') {
          if (source?.kind !== 'cached') throw new Error(`${entry.path}: file entry without a source`);
          run.cache.set(entry.path, source.cached);
        }
        run.entries.push(entry);
      }
      await hooks.afterEntry?.(entry);
    },
    onWarning: (m) => run.warnings.push(m),
  });
  if (pending.length > 0) throw new Error(`${pending.length} blocks submitted after the last entry`);
  return { run, result };
}
