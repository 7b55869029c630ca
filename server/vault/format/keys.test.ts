import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalBackend } from '../backends/local-backend.ts';
import { newMasterKey } from './crypto.ts';
import { VaultPassphraseError } from './errors.ts';
import { addKey, createKeyFile, type KdfParams, openKeyFile, openRepositoryKey } from './keys.ts';
import { sha256Hex } from './id.ts';
import { tempDir } from './restic-cli.test-helpers.ts';

// cheap parameters keep the unit tests fast; the interop tests use the default ones
const FAST: KdfParams = { N: 1024, r: 8, p: 1 };
const PASS = 'a passphrase of 16+ chars';

let dir: { dir: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  dir = await tempDir('holdfast-keys-');
});
afterEach(async () => {
  await dir.cleanup();
});

async function snapshotFolder(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string): Promise<void> {
    for (const name of await readdir(d)) {
      const full = path.join(d, name);
      const st = await stat(full);
      if (st.isDirectory()) await walk(full);
      else out.push(`${path.relative(root, full)} ${st.size} ${st.mtimeMs}`);
    }
  }
  await walk(root);
  return out.sort();
}

describe('key files', () => {
  it('writes restic key JSON named by its SHA-256, and opens it with the passphrase', async () => {
    const master = newMasterKey();
    const file = await createKeyFile(PASS, master, { kdf: FAST, hostname: 'h', username: 'u' });
    expect(file.id).toBe(sha256Hex(file.bytes));
    const json = JSON.parse(file.bytes.toString());
    expect(Object.keys(json)).toEqual([
      'created',
      'username',
      'hostname',
      'kdf',
      'N',
      'r',
      'p',
      'salt',
      'data',
    ]);
    expect(json).toMatchObject({ kdf: 'scrypt', N: 1024, r: 8, p: 1, hostname: 'h', username: 'u' });
    expect(Buffer.from(json.salt, 'base64')).toHaveLength(64);
    const opened = await openKeyFile(PASS, file.bytes);
    expect(opened?.encrypt.equals(master.encrypt)).toBe(true);
    expect(await openKeyFile(`${PASS}x`, file.bytes)).toBeUndefined();
  });

  it('refuses a passphrase shorter than 16 characters for a new key', async () => {
    await expect(createKeyFile('fifteen chars!!', newMasterKey(), { kdf: FAST })).rejects.toThrow(
      /at least 16 characters/,
    );
    await expect(createKeyFile('sixteen chars!!!', newMasterKey(), { kdf: FAST })).resolves.toBeDefined();
  });

  it('tries every key in keys/, and a wrong passphrase writes nothing and says so plainly', async () => {
    const backend = new LocalBackend(dir.dir);
    const master = newMasterKey();
    await addKey(backend, PASS, master, { kdf: FAST });
    const second = await addKey(backend, 'the second passphrase', master, { kdf: FAST });
    const found = await openRepositoryKey(backend, 'the second passphrase');
    expect(found.keyId).toBe(second);
    expect(found.key.mac.r.equals(master.mac.r)).toBe(true);

    const before = await snapshotFolder(dir.dir);
    const err = await openRepositoryKey(backend, 'not any of the passphrases').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VaultPassphraseError);
    expect((err as Error).message).toBe('wrong vault passphrase (no key in keys/ opens with it)');
    expect(await snapshotFolder(dir.dir)).toEqual(before);
  });

  it('skips a damaged key file rather than failing on it', async () => {
    const backend = new LocalBackend(dir.dir);
    await backend.save(`keys/${'0'.repeat(64)}`, Buffer.from('not json'));
    await addKey(backend, PASS, newMasterKey(), { kdf: FAST });
    await expect(openRepositoryKey(backend, PASS)).resolves.toBeDefined();
  });

  it('says when there are no keys at all', async () => {
    await expect(openRepositoryKey(new LocalBackend(dir.dir), PASS)).rejects.toThrow(/no key files/);
  });

  it('refuses key files whose scrypt parameters are invalid or absurd', async () => {
    const file = await createKeyFile(PASS, newMasterKey(), { kdf: FAST });
    const json = JSON.parse(file.bytes.toString());
    await expect(openKeyFile(PASS, Buffer.from(JSON.stringify({ ...json, N: 1000 })))).rejects.toThrow(
      /invalid scrypt/,
    );
    await expect(
      openKeyFile(PASS, Buffer.from(JSON.stringify({ ...json, N: 2 ** 24, r: 64 }))),
    ).rejects.toThrow(/1 GiB/);
    await expect(openKeyFile(PASS, Buffer.from(JSON.stringify({ ...json, kdf: 'argon2' })))).rejects.toThrow(
      /unsupported kdf/,
    );
  });
});
