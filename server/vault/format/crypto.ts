import { type Cipher, createCipheriv, randomBytes, timingSafeEqual } from 'node:crypto';
import { crypto_onetimeauth } from 'sodium-native';
import { VaultFormatError, VaultIntegrityError } from './errors.ts';

/**
 * restic's authenticated encryption (doc/design.rst, "Keys, Encryption and MAC"; restic's
 * internal/crypto/crypto.go): every stored object is
 *
 *   IV (16 random bytes) || AES-256-CTR(encrypt key, IV, plaintext) || Poly1305-AES MAC (16)
 *
 * The MAC is Bernstein's Poly1305-AES over the ciphertext: the one-time Poly1305 key is
 * r || AES-128(k, IV), where k and r are the master key's mac.k and mac.r and the IV doubles as
 * the nonce. Poly1305 itself clamps ("masks") r, so storing r masked or not makes no difference.
 * Node's crypto has no raw Poly1305 (only inside ChaCha20-Poly1305), hence libsodium's
 * crypto_onetimeauth (sodium-native, ~3 GB/s; a pure-JS Poly1305 ran at ~150 MB/s and was most of
 * an online backup's CPU time).
 */

export const IV_SIZE = 16;
export const MAC_SIZE = 16;
/** Bytes encryption adds to a plaintext: restic's crypto.Extension. */
export const CRYPTO_OVERHEAD = IV_SIZE + MAC_SIZE;

/** A repository's master key: what a key file's `data` decrypts to. */
export interface MasterKey {
  /** AES-256 key for CTR mode. */
  encrypt: Buffer;
  mac: {
    /** AES-128 key that turns the nonce into Poly1305's `s` part. */
    k: Buffer;
    /** Poly1305's `r` part. */
    r: Buffer;
  };
}

/** The JSON form restic stores (`restic cat masterkey`): base64 fields. */
export interface MasterKeyJson {
  mac: { k: string; r: string };
  encrypt: string;
}

export function newMasterKey(): MasterKey {
  return { encrypt: randomBytes(32), mac: { k: randomBytes(16), r: randomBytes(16) } };
}

export function masterKeyToJson(key: MasterKey): MasterKeyJson {
  return {
    mac: { k: key.mac.k.toString('base64'), r: key.mac.r.toString('base64') },
    encrypt: key.encrypt.toString('base64'),
  };
}

export function masterKeyFromJson(value: unknown): MasterKey {
  const v = value as Partial<MasterKeyJson> | null;
  if (typeof v?.encrypt !== 'string' || typeof v.mac?.k !== 'string' || typeof v.mac?.r !== 'string') {
    throw new VaultFormatError('master key JSON lacks encrypt, mac.k or mac.r');
  }
  const key = {
    encrypt: Buffer.from(v.encrypt, 'base64'),
    mac: { k: Buffer.from(v.mac.k, 'base64'), r: Buffer.from(v.mac.r, 'base64') },
  };
  assertValidKey(key);
  return key;
}

/** restic refuses all-zero keys (Key.Valid); so do we, and wrong lengths too. */
export function assertValidKey(key: MasterKey): void {
  if (key.encrypt.length !== 32 || key.mac.k.length !== 16 || key.mac.r.length !== 16) {
    throw new VaultFormatError(
      'master key has wrong lengths (want 32-byte encrypt, 16-byte mac.k and mac.r)',
    );
  }
  if (isAllZero(key.encrypt) || isAllZero(key.mac.k) || isAllZero(key.mac.r)) {
    throw new VaultFormatError('master key is all zeros');
  }
}

/** Encrypts and authenticates: IV || ciphertext || MAC, with a fresh random IV. */
export function encrypt(key: MasterKey, plaintext: Uint8Array): Buffer {
  return Buffer.concat(encryptParts(key, plaintext));
}

/**
 * encrypt()'s output as its three parts (IV, ciphertext, MAC), for callers that assemble many
 * encrypted objects into one buffer (packs): each byte is then copied once, not twice.
 */
export function encryptParts(key: MasterKey, plaintext: Uint8Array): [Buffer, Buffer, Buffer] {
  const iv = freshIv();
  const cipher = createCipheriv('aes-256-ctr', key.encrypt, iv);
  const body = cipher.update(plaintext);
  const tail = cipher.final(); // empty for CTR, a stream mode
  const ciphertext = tail.length > 0 ? Buffer.concat([body, tail]) : body;
  return [iv, ciphertext, mac(key, iv, ciphertext)];
}

/**
 * Verifies the MAC, then decrypts. The MAC is checked first so that no byte of tampered or
 * damaged data is ever returned.
 */
export function decrypt(key: MasterKey, data: Uint8Array, what = 'data'): Buffer {
  if (data.length < CRYPTO_OVERHEAD) {
    throw new VaultIntegrityError(`${what} is too short to be encrypted (${data.length} bytes)`);
  }
  const iv = data.subarray(0, IV_SIZE);
  const ciphertext = data.subarray(IV_SIZE, data.length - MAC_SIZE);
  const tag = data.subarray(data.length - MAC_SIZE);
  if (isAllZero(iv)) throw new VaultIntegrityError(`${what} has an all-zero nonce`);
  if (!timingSafeEqual(mac(key, iv, ciphertext), tag)) {
    throw new VaultIntegrityError(
      `${what} failed authentication (MAC mismatch): damaged, tampered with, or another key`,
    );
  }
  const decipher = createCipheriv('aes-256-ctr', key.encrypt, iv);
  return Buffer.concat([decipher.update(ciphertext), decipher.final()]);
}

/**
 * IVs are cut from blocks of random bytes drawn 256 IVs at a time: a pack of small blobs
 * otherwise spends as long in the random generator as in the cipher. Each block is a new buffer,
 * so an IV handed out is never overwritten.
 */
const IV_BLOCK_BYTES = 256 * IV_SIZE;
let ivBlock = Buffer.alloc(0);
let ivAt = 0;

function freshIv(): Buffer {
  for (;;) {
    if (ivAt + IV_SIZE > ivBlock.length) {
      ivBlock = randomBytes(IV_BLOCK_BYTES);
      ivAt = 0;
    }
    const iv = ivBlock.subarray(ivAt, ivAt + IV_SIZE);
    ivAt += IV_SIZE;
    // restic rejects an all-zero nonce on decryption; the odds are 2^-128, but be exact
    if (!isAllZero(iv)) return iv;
  }
}

function mac(key: MasterKey, nonce: Uint8Array, ciphertext: Uint8Array): Buffer {
  return poly1305Aes(key.mac, nonce, ciphertext);
}

/** Poly1305-AES (Bernstein 2005): Poly1305 with the one-time key r || AES-128_k(nonce). */
export function poly1305Aes(
  macKey: { k: Uint8Array; r: Uint8Array },
  nonce: Uint8Array,
  message: Uint8Array,
): Buffer {
  const s = nonceCipher(macKey.k).update(nonce);
  const polyKey = Buffer.allocUnsafe(32);
  polyKey.set(macKey.r, 0);
  polyKey.set(s, 16);
  const tag = Buffer.allocUnsafe(MAC_SIZE);
  crypto_onetimeauth(tag, message, polyKey);
  return tag;
}

/**
 * AES-128 in ECB mode under k, kept per key: each nonce is one whole block, so the cipher holds
 * no state between calls, and setting up a new one per blob cost more than the MAC itself.
 */
const nonceCiphers = new WeakMap<Uint8Array, Cipher>();

function nonceCipher(k: Uint8Array): Cipher {
  let aes = nonceCiphers.get(k);
  if (!aes) {
    aes = createCipheriv('aes-128-ecb', k, null);
    aes.setAutoPadding(false);
    nonceCiphers.set(k, aes);
  }
  return aes;
}

function isAllZero(b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}
