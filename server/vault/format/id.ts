import { createHash } from 'node:crypto';

/**
 * Every name in a restic repository (packs, index files, snapshots, keys, locks, blobs) is the
 * lower-case hex SHA-256 of some bytes: 64 characters. Blobs are named by their plaintext,
 * files by their stored (encrypted) bytes.
 */

export const ID_PATTERN = /^[0-9a-f]{64}$/;

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function isId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value);
}
