import { compress, decompress } from 'zstd-napi';
import { packPath, type VaultBackend } from '../backends/backend.ts';
import { CRYPTO_OVERHEAD, decrypt, encrypt, encryptParts, type MasterKey } from './crypto.ts';
import { VaultFormatError, VaultIntegrityError } from './errors.ts';
import { isId, sha256Hex } from './id.ts';

/**
 * Pack files (doc/design.rst, "Pack Format"; restic's internal/repository/pack/pack.go):
 *
 *   EncryptedBlob1 || ... || EncryptedBlobN || EncryptedHeader || HeaderLength (uint32 LE)
 *
 * Each blob is encrypt(plaintext) or, in format 2, encrypt(zstd(plaintext)) — no extra byte
 * before the zstd frame. The decrypted header is one entry per blob, in file order:
 *
 *   type 0 data / 1 tree:            type(1) || length(4 LE) || id(32)
 *   type 2 zstd data / 3 zstd tree:  type(1) || length(4 LE) || uncompressed length(4 LE) || id(32)
 *
 * `length` is the encrypted blob's length (IV + ciphertext + MAC); blob offsets follow from
 * the order. A blob's id is the SHA-256 of its uncompressed plaintext (Holdfast's block hash).
 * The pack's own name is the SHA-256 of all its bytes, stored at data/<2 hex>/<id>.
 * Format 2 forbids mixing data and tree blobs in one pack.
 */

export type BlobType = 'data' | 'tree';

/** A blob to pack: either its plaintext, or a zstd frame of it (e.g. straight from the chunk store). */
export type PackBlobInput =
  | { type: BlobType; plaintext: Buffer /** computed when absent; checked when given */; id?: string }
  | { type: BlobType; id: string; zstd: Buffer; uncompressedLength: number };

/** Where one blob sits in a pack: exactly an index file's blob entry. */
export interface PackEntry {
  id: string;
  type: BlobType;
  offset: number;
  /** Stored (encrypted) length. */
  length: number;
  /** Present only for compressed blobs: the plaintext length. */
  uncompressedLength?: number;
}

export interface BuiltPack {
  /** SHA-256 of `bytes`: the pack's name. */
  id: string;
  bytes: Buffer;
  type: BlobType;
  entries: PackEntry[];
}

export interface BuildPackOptions {
  /** Try zstd on plaintext blobs and keep it where it is smaller. Must be false for format 1. Default true. */
  compression?: boolean;
  /**
   * Decompress and hash pre-compressed blobs before packing them (default true). A wrong hash
   * would only surface at `restic check --read-data` or at restore; this catches it here.
   */
  verifyPrecompressed?: boolean;
}

const ENTRY_PLAIN = 1 + 4 + 32;
const ENTRY_COMPRESSED = 1 + 4 + 4 + 32;
const HEADER_LENGTH_SIZE = 4;
/** restic's pack.MaxHeaderSize: a reader refuses larger headers. */
export const MAX_HEADER_SIZE = 16 * 1024 * 1024 + HEADER_LENGTH_SIZE;
/** restic reads the last 15 entries' worth eagerly; so do we, to list most packs in one request. */
const EAGER_TAIL = 15 * ENTRY_COMPRESSED + CRYPTO_OVERHEAD + HEADER_LENGTH_SIZE;
const MAX_UINT32 = 0xffffffff;
const ZSTD_LEVEL = 3;

/** Assembles a pack in memory. Pure and synchronous, so it can run in a worker thread. */
export function buildPack(key: MasterKey, blobs: PackBlobInput[], options: BuildPackOptions = {}): BuiltPack {
  if (blobs.length === 0) throw new VaultFormatError('a pack needs at least one blob');
  const type = blobs[0]!.type;
  const compression = options.compression ?? true;
  const verify = options.verifyPrecompressed ?? true;
  const parts: Buffer[] = [];
  const entries: PackEntry[] = [];
  const seen = new Set<string>();
  let offset = 0;
  for (const blob of blobs) {
    if (blob.type !== type)
      throw new VaultFormatError('a pack holds only data blobs or only tree blobs, not both');
    const { id, payload, uncompressedLength } = preparePayload(blob, compression, verify);
    if (seen.has(id)) throw new VaultFormatError(`blob ${id} appears twice in one pack`);
    seen.add(id);
    const stored = encryptParts(key, payload);
    const storedLength = payload.length + CRYPTO_OVERHEAD;
    if (storedLength > MAX_UINT32) throw new VaultFormatError(`blob ${id} is too large for a pack header`);
    parts.push(...stored);
    entries.push({
      id,
      type,
      offset,
      length: storedLength,
      ...(uncompressedLength !== undefined && { uncompressedLength }),
    });
    offset += storedLength;
  }
  const header = encrypt(key, encodeHeader(entries));
  if (header.length + HEADER_LENGTH_SIZE > MAX_HEADER_SIZE) {
    throw new VaultFormatError(`too many blobs (${entries.length}) for one pack header`);
  }
  const length = Buffer.allocUnsafe(HEADER_LENGTH_SIZE);
  length.writeUInt32LE(header.length, 0);
  parts.push(header, length);
  const bytes = Buffer.concat(parts);
  return { id: sha256Hex(bytes), bytes, type, entries };
}

function preparePayload(
  blob: PackBlobInput,
  compression: boolean,
  verify: boolean,
): { id: string; payload: Buffer; uncompressedLength?: number } {
  if ('plaintext' in blob) {
    const id = sha256Hex(blob.plaintext);
    if (blob.id !== undefined && blob.id !== id) {
      throw new VaultIntegrityError(`blob ${blob.id}: plaintext hashes to ${id}`);
    }
    if (compression && blob.plaintext.length > 0) {
      const packed = compress(blob.plaintext, { compressionLevel: ZSTD_LEVEL });
      if (packed.length < blob.plaintext.length)
        return { id, payload: packed, uncompressedLength: blob.plaintext.length };
    }
    return { id, payload: blob.plaintext };
  }
  if (!compression) throw new VaultFormatError('compressed blobs need repository format 2');
  if (!isId(blob.id))
    throw new VaultFormatError(`blob id ${JSON.stringify(blob.id)} is not 64 hex characters`);
  if (
    !Number.isSafeInteger(blob.uncompressedLength) ||
    blob.uncompressedLength <= 0 ||
    blob.uncompressedLength > MAX_UINT32
  ) {
    throw new VaultFormatError(`blob ${blob.id}: invalid uncompressed length ${blob.uncompressedLength}`);
  }
  if (verify) {
    const plain = decompressExact(blob.zstd, blob.uncompressedLength, `blob ${blob.id}`);
    if (sha256Hex(plain) !== blob.id)
      throw new VaultIntegrityError(`blob ${blob.id}: zstd data does not hash to its id`);
  }
  return { id: blob.id, payload: blob.zstd, uncompressedLength: blob.uncompressedLength };
}

function encodeHeader(entries: PackEntry[]): Buffer {
  let size = 0;
  for (const e of entries) size += e.uncompressedLength === undefined ? ENTRY_PLAIN : ENTRY_COMPRESSED;
  const buf = Buffer.alloc(size);
  let pos = 0;
  for (const e of entries) {
    const compressed = e.uncompressedLength !== undefined;
    buf.writeUInt8((e.type === 'tree' ? 1 : 0) + (compressed ? 2 : 0), pos);
    buf.writeUInt32LE(e.length, pos + 1);
    pos += 5;
    if (compressed) {
      buf.writeUInt32LE(e.uncompressedLength!, pos);
      pos += 4;
    }
    buf.write(e.id, pos, 'hex');
    pos += 32;
  }
  return buf;
}

/** The size restic expects for a pack holding these entries (its check compares this to the file size). */
export function expectedPackSize(entries: Pick<PackEntry, 'length' | 'uncompressedLength'>[]): number {
  let size = CRYPTO_OVERHEAD + HEADER_LENGTH_SIZE;
  for (const e of entries)
    size += e.length + (e.uncompressedLength === undefined ? ENTRY_PLAIN : ENTRY_COMPRESSED);
  return size;
}

/**
 * Parses a pack's header from the last bytes of the pack. `tail` must be the last
 * `tail.length` bytes of a pack of `packSize` bytes; returns how many tail bytes are needed
 * when it holds too few (`needTail`).
 */
export function parsePackHeader(
  key: MasterKey,
  tail: Buffer,
  packSize: number,
  what = 'pack',
): { entries: PackEntry[] } | { needTail: number } {
  if (packSize < ENTRY_PLAIN + CRYPTO_OVERHEAD + HEADER_LENGTH_SIZE) {
    throw new VaultFormatError(`${what}: file is too short to be a pack (${packSize} bytes)`);
  }
  if (tail.length < HEADER_LENGTH_SIZE) throw new VaultFormatError(`${what}: need the last 4 bytes`);
  const headerLength = tail.readUInt32LE(tail.length - HEADER_LENGTH_SIZE);
  if (
    headerLength < CRYPTO_OVERHEAD ||
    headerLength > packSize - HEADER_LENGTH_SIZE ||
    headerLength > MAX_HEADER_SIZE
  ) {
    throw new VaultFormatError(`${what}: invalid header length ${headerLength}`);
  }
  if (tail.length < headerLength + HEADER_LENGTH_SIZE) return { needTail: headerLength + HEADER_LENGTH_SIZE };
  const end = tail.length - HEADER_LENGTH_SIZE;
  const header = decrypt(key, tail.subarray(end - headerLength, end), `${what} header`);
  const entries: PackEntry[] = [];
  let pos = 0;
  let offset = 0;
  while (pos < header.length) {
    const t = header[pos]!;
    if (t > 3) throw new VaultFormatError(`${what}: invalid blob type ${t} in header`);
    const compressed = t >= 2;
    const entrySize = compressed ? ENTRY_COMPRESSED : ENTRY_PLAIN;
    if (pos + entrySize > header.length) throw new VaultFormatError(`${what}: truncated header entry`);
    const length = header.readUInt32LE(pos + 1);
    const entry: PackEntry = { id: '', type: t % 2 === 1 ? 'tree' : 'data', offset, length };
    if (compressed) entry.uncompressedLength = header.readUInt32LE(pos + 5);
    entry.id = header.toString('hex', pos + entrySize - 32, pos + entrySize);
    entries.push(entry);
    offset += length;
    pos += entrySize;
  }
  if (offset + headerLength + HEADER_LENGTH_SIZE !== packSize) {
    throw new VaultFormatError(
      `${what}: header lists ${offset} bytes of blobs, but the pack has ${packSize - headerLength - HEADER_LENGTH_SIZE}`,
    );
  }
  return { entries };
}

/** Lists the blobs of a stored pack from its header (one or two ranged reads). */
export async function listPack(backend: VaultBackend, key: MasterKey, packId: string): Promise<PackEntry[]> {
  const path = packPath(packId);
  const st = await backend.stat(path);
  if (!st) throw new VaultFormatError(`${path} does not exist`);
  let want = Math.min(st.size, EAGER_TAIL);
  for (;;) {
    const tail = await backend.load(path, { offset: st.size - want, length: want });
    const parsed = parsePackHeader(key, tail, st.size, path);
    if ('entries' in parsed) return parsed.entries;
    want = parsed.needTail;
  }
}

/** Decrypts one stored blob, decompresses it if needed and checks it hashes to its id. */
export function decodeBlob(
  key: MasterKey,
  stored: Buffer,
  entry: Pick<PackEntry, 'id' | 'uncompressedLength'>,
): Buffer {
  const what = `blob ${entry.id}`;
  const plain = decrypt(key, stored, what);
  const data =
    entry.uncompressedLength === undefined ? plain : decompressExact(plain, entry.uncompressedLength, what);
  if (sha256Hex(data) !== entry.id) throw new VaultIntegrityError(`${what}: content does not hash to its id`);
  return data;
}

/** Reads one blob from a stored pack by its index entry. */
export async function readBlobFromPack(
  backend: VaultBackend,
  key: MasterKey,
  packId: string,
  entry: Pick<PackEntry, 'id' | 'offset' | 'length' | 'uncompressedLength'>,
): Promise<Buffer> {
  const stored = await backend.load(packPath(packId), { offset: entry.offset, length: entry.length });
  return decodeBlob(key, stored, entry);
}

function decompressExact(frame: Buffer, expected: number, what: string): Buffer {
  let out: Buffer;
  try {
    out = decompress(frame);
  } catch (err) {
    throw new VaultIntegrityError(`${what}: zstd data does not decompress`, { cause: err });
  }
  if (out.length !== expected) {
    throw new VaultIntegrityError(`${what}: decompresses to ${out.length} bytes, header says ${expected}`);
  }
  return out;
}
