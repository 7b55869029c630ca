import { fileURLToPath } from 'node:url';
import { type EmulatorProcess, startEmulator } from './process.ts';

/** s3rver's fixed account (a wrong access key id gets 403 InvalidAccessKeyId). */
export const S3RVER_ACCESS_KEY_ID = 'S3RVER';
export const S3RVER_SECRET_ACCESS_KEY = 'S3RVER';

export type S3Emulator = EmulatorProcess;

/**
 * An S3 emulator (npm `s3rver`, through s3rver-main.cjs, which makes its PutObject atomic as
 * S3's is) as a child process on a free loopback port, data in a temp folder. Path-style only.
 *
 * What s3rver does not do, so the tests do not rely on it: it does not verify SigV4
 * signatures (only that the access key id is S3RVER), and it answers a one-byte range
 * `bytes=0-0` with the whole object (the S3 backend copes with a widened range).
 */
export async function startS3Emulator(): Promise<S3Emulator> {
  const main = fileURLToPath(new URL('./s3rver-main.cjs', import.meta.url));
  return startEmulator({
    label: 's3rver',
    // --openssl-legacy-provider: s3rver encrypts ListObjectsV2 continuation tokens with DES,
    // which OpenSSL 3 only has there; without it the second page of any listing is a 500.
    args: (port, dir) => ['--openssl-legacy-provider', main, dir, String(port)],
  });
}
