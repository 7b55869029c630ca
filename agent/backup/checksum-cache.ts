import { mkdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Packr } from 'msgpackr';
import { compress, decompress } from 'zstd-napi';
import { writeFileAtomic } from '../../lib/durable-fs.ts';
import type { CachedFile } from './files-scanner.ts';

/**
 * The checksum cache lets an incremental backup skip reading unchanged files. It is only an
 * optimisation: whenever it is missing, damaged, of another version or not the cache of the
 * recovery point the backup builds on, it is ignored and every file is read again. It must never
 * be the reason a backup is wrong, so load validates every field it hands back.
 *
 * File: `<stateDir>/cache/<datasourceId>.cache`, zstd (with frame checksum) of MessagePack
 * `{ format, version, datasourceId, rpId, layout, files: [path, size, mtimeMs, ctimeMs, ino, hashes][] }`
 * where `layout` names how the blocks were cut (content-chunker.ts `blockLayout`; a cache of
 * another layout is ignored) and `hashes` is one bin of the concatenated 32-byte block hashes (half the size of an
 * array of 32-byte bins, and one allocation per file instead of one per block).
 */
const FORMAT = 'holdfast-checksum-cache';
const VERSION = 2;
const HASH_BYTES = 32;

const packr = new Packr({ useRecords: false });

type Row = [path: string, size: number, mtimeMs: number, ctimeMs: number, ino: number, hashes: Uint8Array];

interface Stored {
  format: string;
  version: number;
  datasourceId: string;
  rpId: string;
  layout: string;
  files: Row[];
}

/** Datasource ids become file names: only a conservative alphabet, never '/', '.' or '..'. */
const SAFE_ID = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$/;

function cacheFile(stateDir: string, datasourceId: string): string {
  if (!SAFE_ID.test(datasourceId)) {
    throw new Error(`datasource id ${JSON.stringify(datasourceId)} cannot be used as a cache file name`);
  }
  return path.join(stateDir, 'cache', `${datasourceId}.cache`);
}

/**
 * Saves in progress in this process, by cache file. A backup that starts right after the one
 * before it ended (the server had its recovery point; this agent was still writing the cache)
 * must find that cache, not re-read every file: a load waits for the save in progress.
 */
const saving = new Map<string, Promise<void>>();

/**
 * The cache saved after recovery point `expectedRpId`, or undefined when there is none usable.
 * Throws only for a datasource id that is not a safe file name (a caller bug).
 */
export async function loadChecksumCache(
  stateDir: string,
  datasourceId: string,
  expectedRpId: string | null,
  layout: string,
): Promise<Map<string, CachedFile> | undefined> {
  const file = cacheFile(stateDir, datasourceId);
  if (expectedRpId === null) return undefined; // a full backup: nothing to be incremental to
  await saving.get(file);
  try {
    const stored = packr.unpack(decompress(await readFile(file))) as unknown;
    return parse(stored, datasourceId, expectedRpId, layout);
  } catch {
    return undefined;
  }
}

/**
 * Writes the cache (atomically). Registered as in progress before this returns its promise, so
 * a load that starts after this call waits for it.
 */
export function saveChecksumCache(
  stateDir: string,
  datasourceId: string,
  rpId: string,
  layout: string,
  cache: Map<string, CachedFile>,
): Promise<void> {
  let file: string;
  try {
    file = cacheFile(stateDir, datasourceId);
  } catch (err) {
    return Promise.reject(err);
  }
  const previous = saving.get(file) ?? Promise.resolve();
  const save = previous.then(() => writeCache(file, datasourceId, rpId, layout, cache));
  const tracked = save.catch(() => {});
  saving.set(file, tracked);
  void tracked.then(() => {
    if (saving.get(file) === tracked) saving.delete(file);
  });
  return save;
}

async function writeCache(
  file: string,
  datasourceId: string,
  rpId: string,
  layout: string,
  cache: Map<string, CachedFile>,
): Promise<void> {
  const files: Row[] = [];
  for (const [p, c] of cache)
    files.push([
      p,
      c.size,
      c.mtimeMs,
      c.ctimeMs,
      c.ino,
      Buffer.concat(c.hashes.map((h) => h ?? ZERO_BLOCK_MARK)),
    ]);
  const stored: Stored = { format: FORMAT, version: VERSION, datasourceId, rpId, layout, files };
  const data = compress(packr.pack(stored), { checksumFlag: true });
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, data, 0o600);
}

function parse(
  stored: unknown,
  datasourceId: string,
  expectedRpId: string,
  layout: string,
): Map<string, CachedFile> | undefined {
  if (typeof stored !== 'object' || stored === null) return undefined;
  const s = stored as Partial<Stored>;
  if (s.format !== FORMAT || s.version !== VERSION) return undefined;
  if (s.datasourceId !== datasourceId || s.rpId !== expectedRpId || s.layout !== layout) return undefined;
  if (!Array.isArray(s.files)) return undefined;
  const map = new Map<string, CachedFile>();
  for (const row of s.files as unknown[]) {
    const c = parseRow(row);
    if (!c) return undefined; // one bad row means the file is not what we wrote: trust none of it
    map.set(c[0], c[1]);
  }
  return map;
}

/** Stands for an all-zero block (null hash); no SHA-256 output is 32 zero bytes in practice. */
const ZERO_BLOCK_MARK = Buffer.alloc(32);

function parseRow(row: unknown): [string, CachedFile] | undefined {
  if (!Array.isArray(row) || row.length !== 6) return undefined;
  const [p, size, mtimeMs, ctimeMs, ino, hashes] = row as unknown[];
  if (typeof p !== 'string' || !(hashes instanceof Uint8Array) || hashes.length % HASH_BYTES !== 0)
    return undefined;
  if (!Number.isSafeInteger(size) || (size as number) < 0) return undefined;
  if (!isFiniteNumber(mtimeMs) || !isFiniteNumber(ctimeMs) || !isFiniteNumber(ino)) return undefined;
  const all = Buffer.from(hashes.buffer, hashes.byteOffset, hashes.byteLength);
  const split: (Buffer | null)[] = [];
  for (let i = 0; i < all.length; i += HASH_BYTES) {
    const h = all.subarray(i, i + HASH_BYTES);
    split.push(h.equals(ZERO_BLOCK_MARK) ? null : h);
  }
  return [p, { size: size as number, mtimeMs, ctimeMs, ino, hashes: split }];
}

function isFiniteNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}
