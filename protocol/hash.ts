import { createHash } from 'node:crypto';

/** Blocks are named by the SHA-256 of their content. */
export function blockHash(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

export function hashHex(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, hash.byteLength).toString('hex');
}
