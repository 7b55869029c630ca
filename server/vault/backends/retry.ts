import { setTimeout as sleep } from 'node:timers/promises';
import { VaultBackendError } from './errors.ts';

/**
 * Retries with exponential backoff for the remote vault backends. Only transient failures are
 * retried — HTTP 408, 429 and 5xx, and network errors (reset, refused, timed out, ...) — and
 * only a bounded number of times; anything else (403, 404, a bad request) fails at once.
 *
 * The SDKs' own retry loops are switched off (maxTries/maxAttempts 1) so that this policy is
 * the only one: the same for Azure and S3, bounded, and observable in tests.
 */

export interface RetryPolicy {
  /** Attempts in all, the first one included (>= 1). */
  maxAttempts: number;
  /** Backoff before the 2nd attempt; doubles for each further one. */
  baseDelayMs: number;
  /** Upper bound for one backoff (also for a server's Retry-After). */
  maxDelayMs: number;
}

/** About 15 s of backoff in all before the 6th and last attempt. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = { maxAttempts: 6, baseDelayMs: 500, maxDelayMs: 8_000 };

/** What a backend makes of an error thrown by its SDK. */
export interface FailureInfo {
  transient: boolean;
  /** HTTP status, when a response came back. */
  status?: number;
  /** A short description for the final error: no secrets in it. */
  message: string;
  /** The server's Retry-After, in ms, when it sent one. */
  retryAfterMs?: number;
}

export interface RetryOptions {
  policy: RetryPolicy;
  /** What is being done, for the error message: "azure:vault: save data/ab/…". */
  describe: string;
  classify(err: unknown): FailureInfo;
  /** Called before each backoff sleep (for logging; the info is already redacted). */
  onRetry?(info: FailureInfo & { attempt: number; delayMs: number }): void;
  /** Whether an error is the operation's own verdict and must pass through untouched (not-found). */
  passThrough?(err: unknown): boolean;
}

export function backoffDelay(policy: RetryPolicy, failedAttempt: number, retryAfterMs?: number): number {
  const exp = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (failedAttempt - 1));
  // "Equal jitter": between half and all of the exponential delay, so that clients that failed
  // together do not come back together, and no retry comes back immediately.
  const jittered = exp / 2 + Math.random() * (exp / 2);
  const delay = retryAfterMs === undefined ? jittered : Math.max(jittered, retryAfterMs);
  return Math.round(Math.min(policy.maxDelayMs, delay));
}

export async function withRetry<T>(op: (attempt: number) => Promise<T>, opts: RetryOptions): Promise<T> {
  const maxAttempts = Math.max(1, Math.floor(opts.policy.maxAttempts));
  for (let attempt = 1; ; attempt++) {
    try {
      return await op(attempt);
    } catch (err) {
      if (opts.passThrough?.(err)) throw err;
      const info = opts.classify(err);
      if (!info.transient) {
        throw new VaultBackendError(`${opts.describe} failed: ${info.message}`, {
          status: info.status,
          attempts: attempt,
        });
      }
      if (attempt >= maxAttempts) {
        throw new VaultBackendError(
          `${opts.describe} failed after ${attempt} attempt${attempt === 1 ? '' : 's'}: ${info.message}`,
          { status: info.status, attempts: attempt, transient: true },
        );
      }
      const delayMs = backoffDelay(opts.policy, attempt, info.retryAfterMs);
      opts.onRetry?.({ ...info, attempt, delayMs });
      await sleep(delayMs);
    }
  }
}

const TRANSIENT_NET_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ETIMEDOUT',
  'ESOCKETTIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'ERR_STREAM_PREMATURE_CLOSE',
  // @azure/core-rest-pipeline wraps every failure to send (or to read the body) in this code.
  'REQUEST_SEND_ERROR',
]);

/** HTTP statuses worth another try. */
export function isTransientStatus(status: number): boolean {
  return status === 408 || status === 429 || (status >= 500 && status <= 599 && status !== 501);
}

/** Network-level failures (no usable response): codes along the error's cause chain. */
export function isTransientNetworkError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && typeof e === 'object' && depth < 5; depth++) {
    const { code, name, message } = e as { code?: unknown; name?: unknown; message?: unknown };
    if (typeof code === 'string' && TRANSIENT_NET_CODES.has(code)) return true;
    if (name === 'TimeoutError') return true;
    if (typeof message === 'string' && /socket hang up|other side closed|premature close/i.test(message)) {
      return true;
    }
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

/** Retry-After header value (seconds or an HTTP date) in ms. */
export function parseRetryAfter(value: string | undefined | null): number | undefined {
  if (!value) return undefined;
  const secs = Number(value);
  if (Number.isFinite(secs) && secs >= 0) return secs * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/**
 * Replaces every occurrence of the given secrets (and of anything that looks like a signature
 * or key parameter) in a message, for errors that quote a server's or SDK's words.
 */
export function redact(message: string, secrets: readonly string[]): string {
  let out = message;
  for (const s of secrets) {
    if (s.length >= 4) out = out.split(s).join('***');
  }
  return out
    .replace(
      /(AccountKey|SharedAccessSignature|sig|Signature|X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token)=[^;&\s"']+/gi,
      '$1=***',
    )
    .replace(/(Authorization:?\s*)(SharedKey|AWS4-HMAC-SHA256|Bearer)\s+[^\s"',]+/gi, '$1$2 ***');
}

/** pino-compatible: only warn is used (one line per retried failure). */
export interface BackendLogger {
  warn(obj: object, msg: string): void;
}

/** One attempt ran past its deadline. */
export class AttemptTimeoutError extends Error {
  constructor(ms: number) {
    super(`no answer within ${ms} ms`);
    this.name = 'TimeoutError';
  }
}

/** A response body ended before its Content-Length (the connection dropped without an error). */
export class TruncatedBodyError extends Error {
  constructor(got: number, expected: number) {
    super(`response body ended after ${got} of ${expected} bytes`);
    this.name = 'TruncatedBodyError';
  }
}

/** What a whole-object load (size unknown up front) is given time for: the largest pack. */
export const WHOLE_LOAD_BYTES = 64 * 1024 * 1024;

/**
 * Runs a remote backend's operations under one retry policy, each attempt with its own
 * deadline: `timeoutMs` plus 10 ms per KB to transfer (so at least ~100 KB/s is expected).
 */
export class RetryRunner {
  constructor(
    private readonly backendName: string,
    private readonly policy: RetryPolicy,
    private readonly timeoutMs: number,
    private readonly classify: (err: unknown) => FailureInfo,
    private readonly log: BackendLogger | undefined,
  ) {}

  run<T>(
    what: string,
    bytes: number,
    op: (signal: AbortSignal) => Promise<T>,
    passThrough?: (err: unknown) => boolean,
  ): Promise<T> {
    const timeout = this.timeoutMs + Math.ceil(bytes / 100);
    return withRetry(
      async () => {
        const signal = AbortSignal.timeout(timeout);
        try {
          return await op(signal);
        } catch (err) {
          if (signal.aborted && !passThrough?.(err)) throw new AttemptTimeoutError(timeout);
          throw err;
        }
      },
      {
        policy: this.policy,
        describe: `${this.backendName}: ${what}`,
        classify: (err) => {
          if (err instanceof AttemptTimeoutError || err instanceof TruncatedBodyError) {
            return { transient: true, message: err.message };
          }
          return this.classify(err);
        },
        passThrough,
        onRetry: (info) =>
          this.log?.warn(
            {
              backend: this.backendName,
              op: what,
              attempt: info.attempt,
              delayMs: info.delayMs,
              status: info.status,
            },
            `vault backend: ${info.message}; retrying`,
          ),
      },
    );
  }
}

export function firstLine(s: string): string {
  return (s.split('\n')[0] ?? '').trim();
}
