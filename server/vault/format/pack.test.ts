import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { compress } from 'zstd-napi';
import { packPath } from '../backends/backend.ts';
import { LocalBackend } from '../backends/local-backend.ts';
import { decrypt, newMasterKey } from './crypto.ts';
import { VaultFormatError, VaultIntegrityError } from './errors.ts';
import { sha256Hex } from './id.ts';
import {
  buildPack,
  decodeBlob,
  expectedPackSize,
  listPack,
  maxPackBytes,
  PackBuilder,
  parsePackHeader,
  readBlobFromPack,
} from './pack.ts';
import { tempDir } from './restic-cli.test-helpers.ts';

const key = newMasterKey();
let dir: { dir: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  dir = await tempDir('holdfast-pack-');
});
afterEach(async () => {
  await dir.cleanup();
});

describe('buildPack', () => {
  it('lays out blobs, encrypted header and header length as restic does, named by SHA-256', () => {
    const text = Buffer.from('compress me '.repeat(1000));
    const noise = randomBytes(5000);
    const pack = buildPack(key, [
      { type: 'data', plaintext: text },
      { type: 'data', plaintext: noise },
    ]);
    expect(pack.id).toBe(sha256Hex(pack.bytes));
    expect(pack.bytes.length).toBe(expectedPackSize(pack.entries));
    const [a, b] = pack.entries;
    // compressible text -> compressed entry with the plaintext length; random bytes stay as they are
    expect(a).toMatchObject({
      id: sha256Hex(text),
      type: 'data',
      offset: 0,
      uncompressedLength: text.length,
    });
    expect(a!.length).toBeLessThan(text.length);
    expect(b).toMatchObject({ id: sha256Hex(noise), offset: a!.length, length: noise.length + 32 });
    expect(b!.uncompressedLength).toBeUndefined();

    // the raw header: type 2 (zstd data) with two lengths, then type 0 (data) with one
    const headerLen = pack.bytes.readUInt32LE(pack.bytes.length - 4);
    const header = decrypt(
      key,
      pack.bytes.subarray(pack.bytes.length - 4 - headerLen, pack.bytes.length - 4),
    );
    expect(header.length).toBe(41 + 37);
    expect(header[0]).toBe(2);
    expect(header.readUInt32LE(1)).toBe(a!.length);
    expect(header.readUInt32LE(5)).toBe(text.length);
    expect(header.toString('hex', 9, 41)).toBe(a!.id);
    expect(header[41]).toBe(0);
    expect(header.readUInt32LE(42)).toBe(b!.length);
    expect(header.toString('hex', 46, 78)).toBe(b!.id);
  });

  it('builds into a buffer it is lent (a shared slot reused pack after pack) and refuses one too small', () => {
    const blobs = [Buffer.from('slot '.repeat(3000)), randomBytes(7000)];
    const limits = { blobs: 2, inputBytes: blobs[0]!.length + blobs[1]!.length };
    const slot = new SharedArrayBuffer(maxPackBytes(limits));
    for (let round = 0; round < 2; round++) {
      const builder = new PackBuilder(key, limits, { into: new Uint8Array(slot) });
      for (const plaintext of blobs) builder.add({ type: 'data', plaintext });
      const pack = builder.finish();
      expect(pack.bytes.buffer).toBe(slot);
      expect(pack.id).toBe(sha256Hex(pack.bytes));
      expect(pack.bytes.length).toBe(expectedPackSize(pack.entries));
      pack.entries.forEach((e, i) => {
        const stored = pack.bytes.subarray(e.offset, e.offset + e.length);
        expect(decodeBlob(key, stored, e).equals(blobs[i]!)).toBe(true);
      });
    }
    const small = new Uint8Array(maxPackBytes(limits) - 1);
    expect(() => new PackBuilder(key, limits, { into: small })).toThrow(RangeError);
  });

  it('marks tree blobs with types 1 and 3', () => {
    const tree = buildPack(key, [
      { type: 'tree', plaintext: Buffer.from('{"nodes":[]}\n') },
      { type: 'tree', plaintext: Buffer.from(JSON.stringify({ nodes: Array(50).fill({ name: 'x' }) })) },
    ]);
    const parsed = parsePackHeader(key, tree.bytes, tree.bytes.length);
    expect(
      'entries' in parsed && parsed.entries.map((e) => [e.type, e.uncompressedLength !== undefined]),
    ).toEqual([
      ['tree', false],
      ['tree', true],
    ]);
  });

  it('refuses mixed blob types, duplicate blobs, empty packs and a wrong given id', () => {
    const a = Buffer.from('a');
    expect(() => buildPack(key, [])).toThrow(VaultFormatError);
    expect(() =>
      buildPack(key, [
        { type: 'data', plaintext: a },
        { type: 'tree', plaintext: Buffer.from('b') },
      ]),
    ).toThrow(/not both/);
    expect(() =>
      buildPack(key, [
        { type: 'data', plaintext: a },
        { type: 'data', plaintext: a },
      ]),
    ).toThrow(/twice/);
    expect(() => buildPack(key, [{ type: 'data', plaintext: a, id: sha256Hex(Buffer.from('b')) }])).toThrow(
      VaultIntegrityError,
    );
  });

  it('takes pre-compressed blobs as they are, after checking they decompress to their id', () => {
    const plain = Buffer.from('from the chunk store '.repeat(200));
    const zstd = compress(plain);
    const pack = buildPack(key, [
      { type: 'data', id: sha256Hex(plain), zstd, uncompressedLength: plain.length },
    ]);
    expect(pack.entries[0]).toMatchObject({ length: zstd.length + 32, uncompressedLength: plain.length });
    expect(
      decodeBlob(key, pack.bytes.subarray(0, pack.entries[0]!.length), pack.entries[0]!).equals(plain),
    ).toBe(true);
    const wrong = {
      type: 'data' as const,
      id: sha256Hex(Buffer.from('x')),
      zstd,
      uncompressedLength: plain.length,
    };
    expect(() => buildPack(key, [wrong])).toThrow(/does not hash to its id/);
    expect(() => buildPack(key, [{ ...wrong, id: sha256Hex(plain), uncompressedLength: 5 }])).toThrow(
      /decompresses to/,
    );
  });

  it('stores everything uncompressed when compression is off (format 1)', () => {
    const pack = buildPack(key, [{ type: 'data', plaintext: Buffer.alloc(10_000) }], { compression: false });
    expect(pack.entries[0]!.uncompressedLength).toBeUndefined();
  });
});

describe('reading packs', () => {
  it('lists a stored pack from its tail, also when the header is larger than the first read', async () => {
    const backend = new LocalBackend(dir.dir);
    const blobs = Array.from({ length: 40 }, (_, i) => ({
      type: 'data' as const,
      plaintext: Buffer.from(`blob ${i} `.repeat(i + 1)),
    }));
    const pack = buildPack(key, blobs);
    await backend.save(packPath(pack.id), pack.bytes);
    expect(await listPack(backend, key, pack.id)).toEqual(pack.entries);
    const short = parsePackHeader(key, pack.bytes.subarray(pack.bytes.length - 100), pack.bytes.length);
    expect('needTail' in short && short.needTail).toBeGreaterThan(100);
    for (const [i, entry] of pack.entries.entries()) {
      expect((await readBlobFromPack(backend, key, pack.id, entry)).equals(blobs[i]!.plaintext)).toBe(true);
    }
  });

  it('detects a damaged blob and a damaged header', () => {
    const pack = buildPack(key, [{ type: 'data', plaintext: randomBytes(300) }]);
    const damaged = Buffer.from(pack.bytes);
    damaged[50]! ^= 0xff;
    expect(() => decodeBlob(key, damaged.subarray(0, pack.entries[0]!.length), pack.entries[0]!)).toThrow(
      VaultIntegrityError,
    );
    const badHeader = Buffer.from(pack.bytes);
    badHeader[badHeader.length - 10]! ^= 0xff;
    expect(() => parsePackHeader(key, badHeader, badHeader.length)).toThrow(VaultIntegrityError);
    const badLength = Buffer.from(pack.bytes);
    badLength.writeUInt32LE(badLength.length, badLength.length - 4);
    expect(() => parsePackHeader(key, badLength, badLength.length)).toThrow(/invalid header length/);
  });

  it('refuses a blob whose content does not hash to the id the index gives', () => {
    const pack = buildPack(key, [{ type: 'data', plaintext: Buffer.from('hello') }]);
    const entry = { ...pack.entries[0]!, id: sha256Hex(Buffer.from('other')) };
    expect(() => decodeBlob(key, pack.bytes.subarray(0, entry.length), entry)).toThrow(
      /does not hash to its id/,
    );
  });
});
