import { describe, expect, it } from 'vitest';
import { compress } from 'zstd-napi';
import { LocalBackend } from '../backends/local-backend.ts';
import { decrypt, encrypt, newMasterKey } from './crypto.ts';
import { VaultFormatError, VaultIntegrityError } from './errors.ts';
import { sha256Hex } from './id.ts';
import { tempDir } from './restic-cli.test-helpers.ts';
import { decodeJsonFile, encodeJsonFile, loadJsonFile, saveJsonFile } from './unpacked.ts';

const key = newMasterKey();

describe('unpacked JSON files', () => {
  it('writes encrypted plain JSON named by the SHA-256 of the stored bytes', () => {
    const file = encodeJsonFile(key, { hello: 'world' });
    expect(file.id).toBe(sha256Hex(file.bytes));
    expect(decodeJsonFile(key, file.bytes, 'x')).toEqual({ hello: 'world' });
  });

  it('writes the format-2 compressed form when asked: encoding byte 2, then zstd JSON, smaller', () => {
    const value = {
      packs: Array.from({ length: 200 }, (_, i) => ({ id: sha256Hex(Buffer.of(i)), blobs: [] })),
    };
    const plain = encodeJsonFile(key, value);
    const packed = encodeJsonFile(key, value, { compress: true });
    expect(packed.id).toBe(sha256Hex(packed.bytes));
    expect(decrypt(key, packed.bytes, 'x')[0]).toBe(2);
    expect(decrypt(key, plain.bytes, 'x')[0]).toBe('{'.charCodeAt(0));
    expect(packed.bytes.length).toBeLessThan(plain.bytes.length * 0.75);
    expect(decodeJsonFile(key, packed.bytes, 'x')).toEqual(value);
  });

  it("reads restic's format-2 form: encoding byte 2, then zstd-compressed JSON", () => {
    const json = Buffer.from(JSON.stringify({ packs: [], compressed: true }));
    const stored = encrypt(key, Buffer.concat([Buffer.from([2]), compress(json)]));
    expect(decodeJsonFile(key, stored, 'x')).toEqual({ packs: [], compressed: true });
    expect(decodeJsonFile(key, encrypt(key, Buffer.from('[1,2]')), 'x')).toEqual([1, 2]);
  });

  it('refuses unknown encodings and broken JSON', () => {
    expect(() => decodeJsonFile(key, encrypt(key, Buffer.from([3, 1, 2])), 'x')).toThrow(
      /unknown encoding version 3/,
    );
    expect(() => decodeJsonFile(key, encrypt(key, Buffer.from('{broken')), 'x')).toThrow(VaultFormatError);
  });

  it('detects a file whose content does not match its name', async () => {
    const dir = await tempDir('holdfast-unpacked-');
    try {
      const backend = new LocalBackend(dir.dir);
      const id = await saveJsonFile(backend, key, 'snapshots', { a: 1 });
      expect(await loadJsonFile(backend, key, 'snapshots', id)).toEqual({ a: 1 });
      const other = encodeJsonFile(key, { a: 2 });
      await backend.save(`snapshots/${id}`, other.bytes);
      await expect(loadJsonFile(backend, key, 'snapshots', id)).rejects.toThrow(VaultIntegrityError);
    } finally {
      await dir.cleanup();
    }
  });
});
