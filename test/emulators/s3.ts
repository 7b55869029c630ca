import { binScript, type EmulatorProcess, startEmulator } from './process.ts';

/** s3rver's fixed account: every request must be signed with it (wrong keys get 403). */
export const S3RVER_ACCESS_KEY_ID = 'S3RVER';
export const S3RVER_SECRET_ACCESS_KEY = 'S3RVER';

export type S3Emulator = EmulatorProcess;

/**
 * An S3 emulator (npm `s3rver`) as a child process on a free loopback port, data in a temp
 * folder. Path-style only (no virtual-host buckets).
 *
 * `--openssl-legacy-provider`: s3rver encrypts ListObjectsV2 continuation tokens with DES,
 * which OpenSSL 3 only has in its legacy provider; without it every truncated listing
 * (the second page) fails with a 500.
 */
export async function startS3Emulator(): Promise<S3Emulator> {
  const script = binScript('s3rver');
  return startEmulator({
    label: 's3rver',
    args: (port, dir) => [
      '--openssl-legacy-provider',
      script,
      '--directory',
      dir,
      '--address',
      '127.0.0.1',
      '--port',
      String(port),
      '--silent',
      '--no-vhost-buckets',
    ],
  });
}
