import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  type GetObjectCommandOutput,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { type VaultBackend, type VaultFolder, VaultNotFoundError } from './backend.ts';
import { VaultBackendError, VaultConfigError } from './errors.ts';
import { checkFolder, checkObjectPath, checkRange, normalizePrefix, PrefixedNames } from './paths.ts';
import { fmtRange, loadedPart, readAll } from './remote-util.ts';
import {
  type BackendLogger,
  DEFAULT_RETRY_POLICY,
  type FailureInfo,
  firstLine,
  isTransientNetworkError,
  isTransientStatus,
  parseRetryAfter,
  type RetryPolicy,
  RetryRunner,
  redact,
  WHOLE_LOAD_BYTES,
} from './retry.ts';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface S3BackendOptions {
  /** e.g. https://s3.eu-west-1.amazonaws.com, https://minio.example.com:9000. */
  endpoint: string;
  bucket: string;
  /** Signing region; us-east-1 (what most S3-compatible servers expect) if not given. */
  region?: string;
  credentials: S3Credentials;
  /** Folder inside the bucket, as restic's `s3:host/bucket/prefix`. */
  prefix?: string;
  /** Path-style URLs (endpoint/bucket/key), which every S3-compatible server takes. Default true. */
  forcePathStyle?: boolean;
  retry?: Partial<RetryPolicy>;
  /** Keys per ListObjectsV2 request (1000, the service's maximum, by default). */
  listPageSize?: number;
  /** Time for one attempt of one request, plus 10 ms per KB transferred. */
  timeoutMs?: number;
  log?: BackendLogger;
}

/** S3 error codes worth another try whatever their status (RequestTimeout is a 400). */
const TRANSIENT_CODES = new Set([
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'InternalError',
  'ServiceUnavailable',
  'Throttling',
  'ThrottlingException',
  'RequestTimeTooSkewed',
]);

/**
 * The vault in an S3 bucket (AWS or any S3-compatible server). A save is one PutObject with
 * Content-MD5, which S3 applies atomically; loads are one (ranged) GetObject; listing pages
 * through ListObjectsV2 with continuation tokens. The SDK's own retries are off: transient
 * failures are retried here, with backoff, a bounded number of times (retry.ts).
 */
export class S3Backend implements VaultBackend {
  readonly name: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly region: string;
  private readonly names: PrefixedNames;
  private readonly secrets: string[];
  private readonly listPageSize: number;
  private readonly runner: RetryRunner;

  constructor(opts: S3BackendOptions) {
    let endpoint: URL;
    try {
      endpoint = new URL(opts.endpoint);
    } catch {
      // Whatever sits before an '@' might be a key: leave it out.
      const shown = opts.endpoint.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)?.*@/, '$1***@');
      throw new VaultConfigError(`invalid S3 endpoint URL ${JSON.stringify(shown)}`);
    }
    if (endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:') {
      throw new VaultConfigError(`S3 endpoint must be an http(s) URL, not ${endpoint.protocol}`);
    }
    if (endpoint.username || endpoint.password) {
      throw new VaultConfigError('S3 endpoint URL must not contain credentials (use the credentials file)');
    }
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(opts.bucket)) {
      throw new VaultConfigError(`invalid S3 bucket name ${JSON.stringify(opts.bucket)}`);
    }
    const { accessKeyId, secretAccessKey, sessionToken } = opts.credentials;
    if (!accessKeyId || !secretAccessKey)
      throw new VaultConfigError('S3 credentials need an access key id and a secret');
    this.secrets = [secretAccessKey, ...(sessionToken ? [sessionToken] : [])];
    this.bucket = opts.bucket;
    this.region = opts.region ?? 'us-east-1';
    this.client = new S3Client({
      endpoint: endpoint.toString(),
      region: this.region,
      forcePathStyle: opts.forcePathStyle ?? true,
      credentials: { accessKeyId, secretAccessKey, sessionToken },
      // No retries inside the SDK: ours are the only ones.
      maxAttempts: 1,
      // Content-MD5 is sent by save(); the newer CRC checksums are not understood by every
      // S3-compatible server, and restic checks what it loads by its own hashes.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: 10_000, requestTimeout: 60_000 },
    });
    this.names = new PrefixedNames(normalizePrefix(opts.prefix));
    this.name = `s3:${opts.bucket}${this.names.prefix ? `/${this.names.prefix}` : ''}`;
    this.listPageSize = opts.listPageSize ?? 1000;
    this.runner = new RetryRunner(
      this.name,
      { ...DEFAULT_RETRY_POLICY, ...opts.retry },
      opts.timeoutMs ?? 60_000,
      (err) => this.classify(err),
      opts.log,
    );
  }

  /** Creates the bucket if it does not exist yet (or is not ours to see). */
  async create(): Promise<void> {
    await this.runner.run('create bucket', 0, async (abortSignal) => {
      try {
        await this.client.send(
          new CreateBucketCommand({
            Bucket: this.bucket,
            ...(this.region === 'us-east-1'
              ? {}
              : { CreateBucketConfiguration: { LocationConstraint: this.region as never } }),
          }),
          { abortSignal },
        );
      } catch (err) {
        if (!(err instanceof S3ServiceException)) throw err;
        if (err.name === 'BucketAlreadyOwnedByYou') return;
        // Some servers say BucketAlreadyExists for a bucket of one's own: whether it is
        // usable is what counts.
        if (err.name === 'BucketAlreadyExists') {
          await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }), { abortSignal });
          return;
        }
        throw err;
      }
    });
  }

  async save(path: string, data: Buffer): Promise<void> {
    checkObjectPath(path);
    const md5 = createHash('md5').update(data).digest('base64');
    await this.runner.run(`save ${path}`, data.length, (abortSignal) =>
      this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.names.key(path),
          Body: data,
          ContentLength: data.length,
          ContentMD5: md5,
          ContentType: 'application/octet-stream',
        }),
        { abortSignal },
      ),
    );
  }

  async load(path: string, range?: { offset: number; length: number }): Promise<Buffer> {
    checkObjectPath(path);
    if (range) checkRange(range);
    if (range?.length === 0) {
      if (!(await this.stat(path))) throw new VaultNotFoundError(path);
      return Buffer.alloc(0);
    }
    return this.runner.run(
      `load ${path}`,
      range?.length ?? WHOLE_LOAD_BYTES,
      async (abortSignal) => {
        let res: GetObjectCommandOutput;
        try {
          res = await this.client.send(
            new GetObjectCommand({
              Bucket: this.bucket,
              Key: this.names.key(path),
              Range: range ? `bytes=${range.offset}-${range.offset + range.length - 1}` : undefined,
            }),
            { abortSignal },
          );
        } catch (err) {
          if (err instanceof S3ServiceException && err.name === 'NoSuchKey')
            throw new VaultNotFoundError(path);
          if (err instanceof S3ServiceException && err.$metadata.httpStatusCode === 416) {
            throw new VaultBackendError(
              `${this.name}: load ${path}: range ${fmtRange(range)} is past the end`,
              {
                status: 416,
              },
            );
          }
          throw err;
        }
        return loadedPart(
          `${this.name}: load ${path}`,
          await readAll(res.Body as Readable | undefined),
          res.ContentLength,
          range,
          res.ContentRange,
        );
      },
      (err) => err instanceof VaultNotFoundError || err instanceof VaultBackendError,
    );
  }

  async stat(path: string): Promise<{ size: number } | undefined> {
    checkObjectPath(path);
    return this.runner.run(`stat ${path}`, 0, async (abortSignal) => {
      try {
        const res = await this.client.send(
          new HeadObjectCommand({ Bucket: this.bucket, Key: this.names.key(path) }),
          { abortSignal },
        );
        return { size: res.ContentLength ?? 0 };
      } catch (err) {
        // A HEAD answer has no body: 404 is all there is (NotFound, or NoSuchKey on some servers).
        if (
          err instanceof S3ServiceException &&
          err.$metadata.httpStatusCode === 404 &&
          err.name !== 'NoSuchBucket'
        ) {
          return undefined;
        }
        throw err;
      }
    });
  }

  async *list(prefix: VaultFolder): AsyncIterable<{ path: string; size: number }> {
    checkFolder(prefix);
    let token: string | undefined;
    do {
      const page = await this.runner.run(`list ${prefix}`, 0, (abortSignal) =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.names.folderKey(prefix),
            MaxKeys: this.listPageSize,
            ContinuationToken: token,
          }),
          { abortSignal },
        ),
      );
      for (const obj of page.Contents ?? []) {
        const path = obj.Key === undefined ? undefined : this.names.path(obj.Key);
        if (path !== undefined) yield { path, size: obj.Size ?? 0 };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async remove(path: string): Promise<void> {
    checkObjectPath(path);
    // S3 answers 204 for a key that is not there: a repeated remove succeeds.
    await this.runner.run(`remove ${path}`, 0, (abortSignal) =>
      this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.names.key(path) }), {
        abortSignal,
      }),
    );
  }

  /** Closes the client's idle connections. */
  destroy(): void {
    this.client.destroy();
  }

  private classify(err: unknown): FailureInfo {
    if (err instanceof S3ServiceException) {
      const status = err.$metadata.httpStatusCode;
      const message = redact(`HTTP ${status ?? '?'} ${err.name}: ${firstLine(err.message)}`, this.secrets);
      if (err.name === 'NoSuchBucket') {
        return {
          transient: false,
          status,
          message: `bucket does not exist (create the vault first): ${message}`,
        };
      }
      const headers = (err.$response as { headers?: Record<string, string> } | undefined)?.headers;
      return {
        transient: TRANSIENT_CODES.has(err.name) || (status !== undefined && isTransientStatus(status)),
        status,
        message,
        retryAfterMs: parseRetryAfter(headers?.['retry-after']),
      };
    }
    const message = redact(
      err instanceof Error ? `${err.name}: ${firstLine(err.message)}` : String(err),
      this.secrets,
    );
    return { transient: isTransientNetworkError(err), message };
  }
}
