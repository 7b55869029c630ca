import { randomBytes, scrypt as scryptCb, type ScryptOptions } from 'node:crypto';
import os from 'node:os';
import type { VaultBackend } from '../backends/backend.ts';
import { decrypt, encrypt, type MasterKey, masterKeyFromJson, masterKeyToJson } from './crypto.ts';
import { VaultError, VaultFormatError, VaultIntegrityError, VaultPassphraseError } from './errors.ts';
import { formatGoTime } from './go-time.ts';
import { sha256Hex } from './id.ts';

/**
 * restic key files (doc/design.rst, "Keys, Encryption and MAC"; restic's internal/crypto/kdf.go
 * and repository/key.go). A key file is plain JSON; its `data` is the master key JSON,
 * encrypted with keys derived from the passphrase by scrypt(N, r, p, 64-byte salt) -> 64 bytes:
 * the first 32 are the AES-256 key, the next 16 the MAC's k, the last 16 the MAC's r.
 *
 * Several key files may exist (several passphrases); any one opens the repository. The file
 * is stored as keys/<SHA-256 of its JSON bytes>.
 */

export interface KdfParams {
  N: number;
  r: number;
  p: number;
}

/** Field order matches restic's Key struct, so `restic key list` shows ours like its own. */
export interface KeyFileJson {
  created: string;
  username: string;
  hostname: string;
  kdf: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
  data: string;
}

/**
 * N=2^15, r=8 needs 32 MiB; p=4 makes one try cost about 0.2 s here. restic calibrates to
 * about 0.5 s (it picked N=2^15, r=8, p=11 on the same machine); we stay a little cheaper
 * because the server opens the vault often, and make up for it with 16+ character passphrases.
 */
export const DEFAULT_KDF: KdfParams = { N: 32768, r: 8, p: 4 };
/** The shortest passphrase Holdfast accepts for a new vault key (restic accepts any). */
export const MIN_PASSPHRASE_LENGTH = 16;
const SALT_LENGTH = 64;
/** Refuse key files whose parameters would make us allocate more than this (a hostile file). */
const MAX_SCRYPT_MEMORY = 1024 * 1024 * 1024;

export interface CreatedKeyFile {
  id: string;
  bytes: Buffer;
  json: KeyFileJson;
}

/** Builds a key file that opens `masterKey` with `passphrase`. Pure: saves nothing. */
export async function createKeyFile(
  passphrase: string,
  masterKey: MasterKey,
  options: { kdf?: KdfParams; username?: string; hostname?: string; now?: Date } = {},
): Promise<CreatedKeyFile> {
  if (passphrase.length < MIN_PASSPHRASE_LENGTH) {
    throw new VaultError(`a vault passphrase must be at least ${MIN_PASSPHRASE_LENGTH} characters long`);
  }
  const kdf = options.kdf ?? DEFAULT_KDF;
  const salt = randomBytes(SALT_LENGTH);
  const userKey = await deriveUserKey(passphrase, salt, kdf);
  const data = encrypt(userKey, Buffer.from(JSON.stringify(masterKeyToJson(masterKey)), 'utf8'));
  const json: KeyFileJson = {
    created: formatGoTime(options.now ?? new Date()),
    username: options.username ?? safeUsername(),
    hostname: options.hostname ?? os.hostname(),
    kdf: 'scrypt',
    N: kdf.N,
    r: kdf.r,
    p: kdf.p,
    salt: salt.toString('base64'),
    data: data.toString('base64'),
  };
  const bytes = Buffer.from(JSON.stringify(json), 'utf8');
  return { id: sha256Hex(bytes), bytes, json };
}

/** Creates a key file for `passphrase` and saves it in keys/. Returns its id. */
export async function addKey(
  backend: VaultBackend,
  passphrase: string,
  masterKey: MasterKey,
  options: { kdf?: KdfParams } = {},
): Promise<string> {
  const file = await createKeyFile(passphrase, masterKey, options);
  await backend.save(`keys/${file.id}`, file.bytes);
  return file.id;
}

/** Tries one key file with the passphrase: the master key, or undefined if the MAC fails. */
export async function openKeyFile(
  passphrase: string,
  bytes: Uint8Array,
  what = 'key file',
): Promise<MasterKey | undefined> {
  const json = parseKeyFile(bytes, what);
  const userKey = await deriveUserKey(passphrase, Buffer.from(json.salt, 'base64'), json);
  let plain: Buffer;
  try {
    plain = decrypt(userKey, Buffer.from(json.data, 'base64'), what);
  } catch (err) {
    if (err instanceof VaultIntegrityError) return undefined;
    throw err;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(plain.toString('utf8'));
  } catch (err) {
    throw new VaultFormatError(`${what}: decrypted master key is not JSON`, { cause: err });
  }
  return masterKeyFromJson(parsed);
}

/**
 * Finds the key file the passphrase opens, trying every file in keys/ (like restic without a
 * key hint). Only reads: a wrong passphrase changes nothing in the vault.
 */
export async function openRepositoryKey(
  backend: VaultBackend,
  passphrase: string,
): Promise<{ key: MasterKey; keyId: string }> {
  let sawKey = false;
  for await (const { path } of backend.list('keys')) {
    sawKey = true;
    let key: MasterKey | undefined;
    try {
      key = await openKeyFile(passphrase, await backend.load(path), path);
    } catch (err) {
      // a damaged or foreign file in keys/ must not hide a good key after it
      if (err instanceof VaultFormatError) continue;
      throw err;
    }
    if (key) return { key, keyId: path.slice('keys/'.length) };
  }
  if (!sawKey) throw new VaultError(`${backend.name} has no key files: not a vault (or not initialised)`);
  throw new VaultPassphraseError();
}

function parseKeyFile(bytes: Uint8Array, what: string): KeyFileJson {
  let json: Partial<KeyFileJson>;
  try {
    json = JSON.parse(Buffer.from(bytes).toString('utf8'));
  } catch (err) {
    throw new VaultFormatError(`${what} is not JSON`, { cause: err });
  }
  if (json.kdf !== 'scrypt')
    throw new VaultFormatError(`${what}: unsupported kdf ${JSON.stringify(json.kdf)}`);
  if (typeof json.salt !== 'string' || typeof json.data !== 'string') {
    throw new VaultFormatError(`${what}: missing salt or data`);
  }
  const { N, r, p } = json;
  if (!isPositiveInt(N) || !isPositiveInt(r) || !isPositiveInt(p) || N < 2 || (N & (N - 1)) !== 0) {
    throw new VaultFormatError(`${what}: invalid scrypt parameters N=${N} r=${r} p=${p}`);
  }
  if (scryptMemory(json as KdfParams) > MAX_SCRYPT_MEMORY) {
    throw new VaultFormatError(`${what}: scrypt parameters N=${N} r=${r} p=${p} need more than 1 GiB`);
  }
  return json as KeyFileJson;
}

/** scrypt(passphrase) -> 64 bytes -> {encrypt: 0..32, mac.k: 32..48, mac.r: 48..64}. */
async function deriveUserKey(passphrase: string, salt: Buffer, kdf: KdfParams): Promise<MasterKey> {
  if (salt.length !== SALT_LENGTH) throw new VaultFormatError(`scrypt salt must be ${SALT_LENGTH} bytes`);
  const options: ScryptOptions = {
    N: kdf.N,
    r: kdf.r,
    p: kdf.p,
    maxmem: scryptMemory(kdf) + 16 * 1024 * 1024,
  };
  const out = await new Promise<Buffer>((resolve, reject) =>
    scryptCb(Buffer.from(passphrase, 'utf8'), salt, 64, options, (err, key) =>
      err ? reject(err) : resolve(key),
    ),
  );
  return { encrypt: out.subarray(0, 32), mac: { k: out.subarray(32, 48), r: out.subarray(48, 64) } };
}

/** Node's estimate of scrypt's memory use: 128 * N * r * p plus the V array. */
function scryptMemory(kdf: KdfParams): number {
  return 128 * kdf.N * kdf.r + 128 * kdf.r * kdf.p;
}

function isPositiveInt(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n > 0;
}

function safeUsername(): string {
  try {
    return os.userInfo().username;
  } catch {
    return '';
  }
}
