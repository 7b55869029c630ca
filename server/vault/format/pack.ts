import { createHash } from 'node:crypto';
import { decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
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
/** Scratch buffers up to this size are kept for the next blob; larger ones are one-off. */
const MAX_KEPT_SCRATCH = 8 * 1024 * 1024;

/*
 * Packing a blob allocates nothing but its ciphertext: compression and the check of
 * pre-compressed blobs use contexts and scratch buffers this thread keeps (a pack's blobs are
 * prepared one at a time, each encrypted before the next). Per-blob buffers left for the garbage
 * collector otherwise pile up to several packs' worth before it runs.
 */
const scratch = {
  cctx: undefined as InstanceType<typeof zstdBinding.CCtx> | undefined,
  dctx: undefined as InstanceType<typeof zstdBinding.DCtx> | undefined,
  compressed: undefined as Buffer | undefined,
  plain: undefined as Buffer | undefined,
};

function scratchBuffer(which: 'compressed' | 'plain', size: number): Buffer {
  const kept = scratch[which];
  if (kept && kept.length >= size) return kept;
  const buf = Buffer.allocUnsafeSlow(size);
  if (size <= MAX_KEPT_SCRATCH) scratch[which] = buf;
  return buf;
}

/** Assembles a pack in memory. Pure and synchronous, so it can run in a worker thread. */
export function buildPack(key: MasterKey, blobs: PackBlobInput[], options: BuildPackOptions = {}): BuiltPack {
  let inputBytes = 0;
  for (const b of blobs) inputBytes += 'plaintext' in b ? b.plaintext.length : b.zstd.length;
  const builder = new PackBuilder(key, { blobs: blobs.length, inputBytes }, options);
  for (const blob of blobs) builder.add(blob);
  return builder.finish();
}

type ResizableArrayBuffer = ArrayBuffer & {
  resize(byteLength: number): void;
  readonly maxByteLength: number;
};
const ResizableArrayBuffer = ArrayBuffer as unknown as new (
  byteLength: number,
  options: { maxByteLength: number },
) => ResizableArrayBuffer;
/** The pack's buffer grows in steps of this much. */
const GROW_STEP = 1024 * 1024;

/** The largest pack a builder can make from at most these inputs: the size its buffer must have. */
export function maxPackBytes(limits: { blobs: number; inputBytes: number }): number {
  return (
    limits.inputBytes +
    limits.blobs * (CRYPTO_OVERHEAD + ENTRY_COMPRESSED) +
    CRYPTO_OVERHEAD +
    HEADER_LENGTH_SIZE
  );
}

/**
 * Assembles a pack blob by blob, straight into the pack's own buffer: a blob's input only needs
 * to stay valid until add() returns (a reader can use one buffer for all), and nothing of a
 * blob but its ciphertext is allocated. The buffer is either one the caller lends (`into`, at
 * least maxPackBytes(limits) long: e.g. a slot of shared memory reused pack after pack) or a
 * resizable ArrayBuffer reserved for the largest pack the announced inputs can make and
 * committed as it grows, so it ends up holding exactly the pack (which can then be moved to
 * another thread as it is). The pack's id is hashed as it is written.
 */
export class PackBuilder {
  /** Only when the builder owns its buffer. */
  private readonly buffer: ResizableArrayBuffer | undefined;
  private readonly view: Uint8Array;
  private readonly max: number;
  private length = 0;
  private readonly hash = createHash('sha256');
  private type: BlobType | undefined;
  private readonly entries: PackEntry[] = [];
  private readonly seen = new Set<string>();
  private readonly compression: boolean;
  private readonly verify: boolean;

  constructor(
    private readonly key: MasterKey,
    /** At most this many blobs, of at most this many input bytes (plaintext or zstd) in all. */
    limits: { blobs: number; inputBytes: number },
    options: BuildPackOptions & { into?: Uint8Array } = {},
  ) {
    this.compression = options.compression ?? true;
    this.verify = options.verifyPrecompressed ?? true;
    this.max = maxPackBytes(limits);
    if (options.into) {
      if (options.into.length < this.max)
        throw new RangeError(
          `a pack of these inputs needs ${this.max} bytes, the buffer lent has ${options.into.length}`,
        );
      this.view = options.into;
    } else {
      this.buffer = new ResizableArrayBuffer(0, { maxByteLength: this.max });
      this.view = new Uint8Array(this.buffer); // tracks the buffer's length
    }
  }

  add(blob: PackBlobInput): void {
    this.type ??= blob.type;
    if (blob.type !== this.type)
      throw new VaultFormatError('a pack holds only data blobs or only tree blobs, not both');
    const { id, payload, uncompressedLength } = preparePayload(blob, this.compression, this.verify);
    if (this.seen.has(id)) throw new VaultFormatError(`blob ${id} appears twice in one pack`);
    const storedLength = payload.length + CRYPTO_OVERHEAD;
    if (storedLength > MAX_UINT32) throw new VaultFormatError(`blob ${id} is too large for a pack header`);
    this.seen.add(id);
    const offset = this.length;
    for (const part of encryptParts(this.key, payload)) this.append(part);
    this.entries.push({
      id,
      type: this.type,
      offset,
      length: storedLength,
      ...(uncompressedLength !== undefined && { uncompressedLength }),
    });
  }

  /** The pack: its bytes are a view of the builder's buffer (the one lent, or its own, fitted). */
  finish(): BuiltPack {
    if (this.type === undefined) throw new VaultFormatError('a pack needs at least one blob');
    const header = encrypt(this.key, encodeHeader(this.entries));
    if (header.length + HEADER_LENGTH_SIZE > MAX_HEADER_SIZE) {
      throw new VaultFormatError(`too many blobs (${this.entries.length}) for one pack header`);
    }
    const length = Buffer.allocUnsafe(HEADER_LENGTH_SIZE);
    length.writeUInt32LE(header.length, 0);
    this.append(header);
    this.append(length);
    this.buffer?.resize(this.length);
    return {
      id: this.hash.digest('hex'),
      bytes: Buffer.from(this.view.buffer, this.view.byteOffset, this.length),
      type: this.type,
      entries: this.entries,
    };
  }

  private append(part: Uint8Array): void {
    const end = this.length + part.length;
    if (end > this.max)
      throw new VaultFormatError('pack inputs are larger than announced to the pack builder');
    if (this.buffer && end > this.buffer.byteLength) {
      this.buffer.resize(Math.min(this.max, end + GROW_STEP));
    }
    this.view.set(part, this.length);
    this.hash.update(part);
    this.length = end;
  }
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
      // Into scratch: the payload is encrypted (copied) before the next blob is prepared.
      const out = scratchBuffer('compressed', zstdBinding.compressBound(blob.plaintext.length));
      scratch.cctx ??= new zstdBinding.CCtx();
      const n = scratch.cctx.compress(out, blob.plaintext, ZSTD_LEVEL);
      if (n < blob.plaintext.length)
        return { id, payload: out.subarray(0, n), uncompressedLength: blob.plaintext.length };
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
    const plain = decompressForCheck(blob.zstd, blob.uncompressedLength, `blob ${blob.id}`);
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

/**
 * decompressExact into this thread's scratch buffer, for data that is only hashed: valid until
 * the next call. A frame that does not declare the expected size takes decompressExact's path.
 */
function decompressForCheck(frame: Buffer, expected: number, what: string): Buffer {
  let declared: number | null;
  try {
    declared = zstdBinding.getFrameContentSize(frame);
  } catch {
    declared = null;
  }
  if (declared !== expected) return decompressExact(frame, expected, what);
  const out = scratchBuffer('plain', expected);
  scratch.dctx ??= new zstdBinding.DCtx();
  let n: number;
  try {
    n = scratch.dctx.decompress(out, frame);
  } catch (err) {
    // more than one frame (larger than declared), or damaged
    throw new VaultIntegrityError(`${what}: zstd data does not decompress to ${expected} bytes`, {
      cause: err,
    });
  }
  if (n !== expected) {
    throw new VaultIntegrityError(`${what}: decompresses to ${n} bytes, header says ${expected}`);
  }
  return out.subarray(0, n);
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
