import { compress, decompress } from 'zstd-napi';
import type { VaultBackend } from '../backends/backend.ts';
import { decrypt, encrypt, type MasterKey } from './crypto.ts';
import { VaultFormatError, VaultIntegrityError } from './errors.ts';
import { sha256Hex } from './id.ts';

/**
 * restic's "unpacked" files: everything that is not a pack or a key file (config, index files,
 * snapshots, locks) is one encrypted JSON document (doc/design.rst, "Unpacked Data Format").
 *
 * Repository format 2 puts an encoding byte before the JSON: '{' or '[' mean the whole
 * plaintext is plain JSON (as in format 1), 2 means zstd-compressed JSON follows. Index files
 * and snapshots of a format 2 repository are written compressed, as restic does (an index is
 * ~150 bytes of JSON per blob, about half of it saved); config and locks stay plain JSON (config
 * must be readable before the version is known). Both forms are read.
 *
 * Every such file but `config` is stored under the SHA-256 of its stored (encrypted) bytes.
 */

export type UnpackedFolder = 'index' | 'snapshots' | 'locks';

export interface EncodedFile {
  /** SHA-256 (hex) of `bytes`: the file's name. */
  id: string;
  bytes: Buffer;
}

const ENCODING_ZSTD_JSON = 2;

export function encodeJsonFile(
  key: MasterKey,
  value: unknown,
  options: { compress?: boolean } = {},
): EncodedFile {
  const json = Buffer.from(JSON.stringify(value), 'utf8');
  const plain = options.compress
    ? Buffer.concat([Buffer.of(ENCODING_ZSTD_JSON), compress(json, { compressionLevel: 3 })])
    : json;
  const bytes = encrypt(key, plain);
  return { id: sha256Hex(bytes), bytes };
}

export function decodeJsonFile(key: MasterKey, bytes: Uint8Array, what: string): unknown {
  const plain = decrypt(key, bytes, what);
  const first = plain[0];
  let json: Buffer;
  if (first === 0x7b || first === 0x5b) {
    json = plain;
  } else if (first === ENCODING_ZSTD_JSON) {
    try {
      json = decompress(plain.subarray(1));
    } catch (err) {
      throw new VaultFormatError(`${what}: compressed JSON does not decompress`, { cause: err });
    }
  } else {
    throw new VaultFormatError(`${what}: unknown encoding version ${first ?? '(empty file)'}`);
  }
  try {
    return JSON.parse(json.toString('utf8'));
  } catch (err) {
    throw new VaultFormatError(`${what}: not valid JSON`, { cause: err });
  }
}

/** Encrypts `value` and saves it as <folder>/<id>. Returns the id. */
export async function saveJsonFile(
  backend: VaultBackend,
  key: MasterKey,
  folder: UnpackedFolder,
  value: unknown,
  options: { compress?: boolean } = {},
): Promise<string> {
  const { id, bytes } = encodeJsonFile(key, value, options);
  await backend.save(`${folder}/${id}`, bytes);
  return id;
}

/** Loads <folder>/<id>, checks its name matches its content, decrypts and parses it. */
export async function loadJsonFile(
  backend: VaultBackend,
  key: MasterKey,
  folder: UnpackedFolder,
  id: string,
): Promise<unknown> {
  const path = `${folder}/${id}`;
  const bytes = await backend.load(path);
  if (sha256Hex(bytes) !== id)
    throw new VaultIntegrityError(`${path}: content does not match its name (damaged)`);
  return decodeJsonFile(key, bytes, path);
}
