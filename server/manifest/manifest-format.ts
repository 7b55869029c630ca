import type { FileHandle } from 'node:fs/promises';
import { Packr } from 'msgpackr';
import { compress, decompress } from 'zstd-napi';
import { type Entry, entrySchema } from '../../protocol/entry.ts';

/**
 * The bytes of one manifest file (docs/chunk-store.md, "Manifest file"):
 *
 *   offset 0  4 bytes  magic 'HFM1'
 *   then, once per appended batch, a record:
 *             4 bytes  n = length of the payload, unsigned big-endian
 *             n bytes  payload: one zstd frame holding a MessagePack array of entries
 *
 * Records let a writer stream a manifest of millions of entries batch by batch, and let a
 * reader hand them on batch by batch, without either holding the whole list. There is no
 * trailer: a manifest only gets its final name once complete (commit), so the end of the
 * file is the end of the list; a cut inside a record is detected and reported.
 */

export const MANIFEST_MAGIC = Buffer.from('HFM1', 'latin1');

/**
 * Largest record payload, checked on write and on read, so a corrupt length prefix cannot
 * make a reader allocate gigabytes. One protocol batch (at most 8 MiB of frame) compresses
 * to far less.
 */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;

const ZSTD_LEVEL = 3;

/** Plain maps and arrays only: records (msgpackr's extension) would tie the format to msgpackr. */
const packr = new Packr({ useRecords: false });

export type ManifestErrorCode =
  | 'MANIFEST_MISSING'
  | 'MANIFEST_CORRUPT'
  | 'MANIFEST_BAD_ID'
  | 'MANIFEST_EXISTS'
  | 'MANIFEST_STATE'
  | 'STORE_FULL'
  | 'STORE_IO';

export class ManifestError extends Error {
  readonly code: ManifestErrorCode;
  constructor(code: ManifestErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ManifestError';
    this.code = code;
  }
}

/** One record, length prefix included. */
export function encodeRecord(entries: Entry[]): Buffer {
  const payload = compress(packr.pack(entries), { compressionLevel: ZSTD_LEVEL });
  if (payload.length > MAX_RECORD_BYTES) {
    throw new ManifestError(
      'MANIFEST_STATE',
      `a batch of ${entries.length} entries compresses to ${payload.length} bytes, over the ${MAX_RECORD_BYTES}-byte record limit; append smaller batches`,
    );
  }
  const record = Buffer.allocUnsafe(4 + payload.length);
  record.writeUInt32BE(payload.length, 0);
  payload.copy(record, 4);
  return record;
}

/**
 * Streams the batches of an open manifest file, validating every entry: a damaged manifest
 * must stop a restore with a clear message, not feed it garbage paths or hashes.
 */
export async function* decodeRecords(fh: FileHandle, file: string): AsyncGenerator<Entry[]> {
  const corrupt = (what: string) =>
    new ManifestError('MANIFEST_CORRUPT', `manifest ${file} is corrupt: ${what}`);
  const magic = Buffer.alloc(4);
  const got = await readFully(fh, magic, 0);
  if (got < 4 || !magic.equals(MANIFEST_MAGIC)) {
    throw corrupt(
      got < 4
        ? `file is ${got} bytes, too short for its magic`
        : `bad magic ${magic.toString('hex')} (expected 'HFM1')`,
    );
  }
  let offset = 4;
  const prefix = Buffer.alloc(4);
  for (let index = 0; ; index++) {
    const n = await readFully(fh, prefix, offset);
    if (n === 0) return;
    if (n < 4) throw corrupt(`truncated: record ${index} at offset ${offset} has a ${n}-byte length prefix`);
    const length = prefix.readUInt32BE(0);
    if (length === 0 || length > MAX_RECORD_BYTES) {
      throw corrupt(`record ${index} at offset ${offset} claims ${length} bytes`);
    }
    const payload = Buffer.allocUnsafe(length);
    const m = await readFully(fh, payload, offset + 4);
    if (m < length)
      throw corrupt(`truncated: record ${index} at offset ${offset} has ${m} of ${length} bytes`);
    yield decodePayload(payload, (what) => corrupt(`record ${index} at offset ${offset}: ${what}`));
    offset += 4 + length;
  }
}

function decodePayload(payload: Buffer, corrupt: (what: string) => ManifestError): Entry[] {
  let items: unknown;
  try {
    items = packr.unpack(decompress(payload));
  } catch (err) {
    throw corrupt(`does not decode (${(err as Error).message})`);
  }
  if (!Array.isArray(items)) throw corrupt('payload is not an array of entries');
  return items.map((item, i) => {
    const parsed = entrySchema.safeParse(item);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw corrupt(
        `entry ${i} is invalid: ${issue?.path.join('.') || '(entry)'}: ${issue?.message ?? 'invalid'}`,
      );
    }
    return parsed.data;
  });
}

/** Reads until `buf` is full or the file ends; returns the bytes read. */
async function readFully(fh: FileHandle, buf: Buffer, position: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}
