import { createHash } from 'node:crypto';
import { BlobServiceClient, type ContainerClient, RestError } from '@azure/storage-blob';
import { type VaultBackend, type VaultFolder, VaultNotFoundError } from './backend.ts';
import { VaultBackendError, VaultConfigError } from './errors.ts';
import { fmtRange, loadedPart, readAll } from './remote-util.ts';
import { checkFolder, checkObjectPath, checkRange, normalizePrefix, PrefixedNames } from './paths.ts';
import {
  type BackendLogger,
  DEFAULT_RETRY_POLICY,
  type FailureInfo,
  firstLine,
  isTransientNetworkError,
  isTransientStatus,
  parseRetryAfter,
  RetryRunner,
  type RetryPolicy,
  redact,
  WHOLE_LOAD_BYTES,
} from './retry.ts';

export interface AzureBackendOptions {
  /** An Azure Storage connection string (account key or SAS). Kept in memory only, never logged. */
  connectionString: string;
  container: string;
  /** Folder inside the container, as restic's `azure:container:/prefix`. */
  prefix?: string;
  retry?: Partial<RetryPolicy>;
  /** Blobs per list request (the service's maximum, 5000, by default). */
  listPageSize?: number;
  /** Time for one attempt of one request, plus 10 ms per KB transferred (at least ~100 KB/s). */
  timeoutMs?: number;
  log?: BackendLogger;
}

/** Largest object sent as one Put Blob; bigger ones go as staged blocks and one commit (also atomic). */
const SINGLE_SHOT_MAX = 256 * 1024 * 1024;

/**
 * The vault in an Azure Blob Storage container (block blobs). Saves are one Put Blob, so a
 * reader sees the whole blob or none of it; loads are one (ranged) Get Blob; listing pages
 * through List Blobs with a prefix. The SDK's own retries are off: transient failures are
 * retried here, with backoff, a bounded number of times (retry.ts).
 */
export class AzureBackend implements VaultBackend {
  readonly name: string;
  private readonly container: ContainerClient;
  private readonly names: PrefixedNames;
  private readonly secrets: string[];
  private readonly listPageSize: number;
  private readonly runner: RetryRunner;

  constructor(opts: AzureBackendOptions) {
    if (!/^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$/.test(opts.container)) {
      throw new VaultConfigError(
        `invalid Azure container name ${JSON.stringify(opts.container)} (3-63 lowercase letters, digits and single hyphens)`,
      );
    }
    this.secrets = connectionStringSecrets(opts.connectionString);
    let service: BlobServiceClient;
    try {
      // retryOptions.maxTries 1: no retries inside the SDK, ours are the only ones.
      service = BlobServiceClient.fromConnectionString(opts.connectionString, {
        retryOptions: { maxTries: 1 },
      });
    } catch {
      // The SDK's message may quote parts of the string: say only what is wrong in general.
      throw new VaultConfigError(
        'invalid Azure Storage connection string (expected AccountName=...;AccountKey=... or BlobEndpoint=...;SharedAccessSignature=...)',
      );
    }
    this.container = service.getContainerClient(opts.container);
    this.names = new PrefixedNames(normalizePrefix(opts.prefix));
    this.name = `azure:${opts.container}${this.names.prefix ? `/${this.names.prefix}` : ''}`;
    this.listPageSize = opts.listPageSize ?? 5000;
    this.runner = new RetryRunner(
      this.name,
      { ...DEFAULT_RETRY_POLICY, ...opts.retry },
      opts.timeoutMs ?? 60_000,
      (err) => this.classify(err),
      opts.log,
    );
  }

  /** Creates the container if it does not exist yet. */
  async create(): Promise<void> {
    await this.runner.run('create container', 0, (signal) =>
      this.container.createIfNotExists({ abortSignal: signal }),
    );
  }

  async save(path: string, data: Buffer): Promise<void> {
    checkObjectPath(path);
    const blob = this.container.getBlockBlobClient(this.names.key(path));
    const md5 = createHash('md5').update(data).digest();
    await this.runner.run(`save ${path}`, data.length, async (signal) => {
      const blobHTTPHeaders = { blobContentMD5: md5, blobContentType: 'application/octet-stream' };
      if (data.length <= SINGLE_SHOT_MAX) {
        await blob.upload(data, data.length, { abortSignal: signal, blobHTTPHeaders });
      } else {
        await blob.uploadData(data, {
          abortSignal: signal,
          blobHTTPHeaders,
          blockSize: 64 * 1024 * 1024,
          concurrency: 2,
          maxSingleShotSize: SINGLE_SHOT_MAX,
        });
      }
    });
  }

  async load(path: string, range?: { offset: number; length: number }): Promise<Buffer> {
    checkObjectPath(path);
    if (range) checkRange(range);
    if (range?.length === 0) {
      // Get Blob reads "to the end" for a count of 0: ask only whether the blob is there.
      if (!(await this.stat(path))) throw new VaultNotFoundError(path);
      return Buffer.alloc(0);
    }
    const blob = this.container.getBlockBlobClient(this.names.key(path));
    return this.runner.run(
      `load ${path}`,
      range?.length ?? WHOLE_LOAD_BYTES,
      async (signal) => {
        let res: Awaited<ReturnType<typeof blob.download>>;
        try {
          res = await blob.download(range?.offset ?? 0, range?.length, {
            abortSignal: signal,
            maxRetryRequests: 0,
          });
        } catch (err) {
          if (err instanceof RestError && err.statusCode === 404 && errorCode(err) === 'BlobNotFound') {
            throw new VaultNotFoundError(path);
          }
          if (err instanceof RestError && err.statusCode === 416) {
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
          await readAll(res.readableStreamBody),
          res.contentLength,
          range,
          res.contentRange,
        );
      },
      (err) => err instanceof VaultNotFoundError || err instanceof VaultBackendError,
    );
  }

  async stat(path: string): Promise<{ size: number } | undefined> {
    checkObjectPath(path);
    const blob = this.container.getBlockBlobClient(this.names.key(path));
    return this.runner.run(`stat ${path}`, 0, async (signal) => {
      try {
        const props = await blob.getProperties({ abortSignal: signal });
        return { size: props.contentLength ?? 0 };
      } catch (err) {
        // A HEAD has no body, so no error code: 404 is the blob (a missing container is
        // reported by list and save).
        if (err instanceof RestError && err.statusCode === 404 && errorCode(err) !== 'ContainerNotFound') {
          return undefined;
        }
        throw err;
      }
    });
  }

  async *list(prefix: VaultFolder): AsyncIterable<{ path: string; size: number }> {
    checkFolder(prefix);
    let continuationToken: string | undefined;
    do {
      const page = await this.runner.run(`list ${prefix}`, 0, async (signal) => {
        const it = this.container
          .listBlobsFlat({ prefix: this.names.folderKey(prefix), abortSignal: signal })
          .byPage({ continuationToken, maxPageSize: this.listPageSize });
        const r = await it.next();
        return r.done ? undefined : r.value;
      });
      if (!page) break;
      for (const item of page.segment.blobItems) {
        const path = this.names.path(item.name);
        if (path !== undefined) yield { path, size: item.properties.contentLength ?? 0 };
      }
      continuationToken = page.continuationToken || undefined;
    } while (continuationToken);
  }

  async remove(path: string): Promise<void> {
    checkObjectPath(path);
    const blob = this.container.getBlockBlobClient(this.names.key(path));
    // deleteIfExists: a blob already gone (or removed by an earlier attempt whose answer was
    // lost) is not an error; a missing container still is.
    await this.runner.run(`remove ${path}`, 0, (signal) => blob.deleteIfExists({ abortSignal: signal }));
  }

  private classify(err: unknown): FailureInfo {
    if (err instanceof RestError && err.statusCode !== undefined) {
      const code = errorCode(err);
      const message = redact(
        `HTTP ${err.statusCode}${code ? ` ${code}` : ''}: ${firstLine(err.message)}`,
        this.secrets,
      );
      if (code === 'ContainerNotFound') {
        return {
          transient: false,
          status: 404,
          message: `container does not exist (create the vault first): ${message}`,
        };
      }
      return {
        transient: isTransientStatus(err.statusCode),
        status: err.statusCode,
        message,
        retryAfterMs: parseRetryAfter(err.response?.headers.get('retry-after')),
      };
    }
    const message = redact(err instanceof Error ? firstLine(err.message) : String(err), this.secrets);
    return {
      transient: isTransientNetworkError(err),
      message,
    };
  }
}

function errorCode(err: RestError): string | undefined {
  const details = err.details as { errorCode?: string } | undefined;
  return details?.errorCode ?? err.code;
}

/** The secret values of a connection string, for redaction. */
function connectionStringSecrets(cs: string): string[] {
  const out = [cs.trim()];
  for (const part of cs.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const key = part.slice(0, eq).trim().toLowerCase();
    const value = part.slice(eq + 1).trim();
    if ((key === 'accountkey' || key === 'sharedaccesssignature') && value) {
      out.push(value);
      // A SAS token also travels URL-encoded in request URLs.
      const sig = /(?:^|&)sig=([^&]+)/.exec(value)?.[1];
      if (sig) out.push(sig, decodeURIComponent(sig));
    }
  }
  return out;
}
