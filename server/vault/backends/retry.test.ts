import { describe, expect, it } from 'vitest';
import { VaultBackendError } from './errors.ts';
import {
  backoffDelay,
  isTransientNetworkError,
  isTransientStatus,
  parseRetryAfter,
  RetryRunner,
  redact,
  withRetry,
} from './retry.ts';

const fast = { maxAttempts: 4, baseDelayMs: 1, maxDelayMs: 4 };
const classify = (err: unknown) => ({
  transient: (err as { transient?: boolean }).transient === true,
  message: (err as Error).message,
  status: (err as { status?: number }).status,
});

function failure(message: string, transient: boolean, status?: number): Error {
  return Object.assign(new Error(message), { transient, status });
}

describe('withRetry', () => {
  it('retries transient failures and returns the first success', async () => {
    let calls = 0;
    const retries: number[] = [];
    const out = await withRetry(
      async (attempt) => {
        calls += 1;
        expect(attempt).toBe(calls);
        if (calls < 3) throw failure('busy', true, 503);
        return 'ok';
      },
      { policy: fast, describe: 'x', classify, onRetry: (i) => retries.push(i.attempt) },
    );
    expect(out).toBe('ok');
    expect(calls).toBe(3);
    expect(retries).toEqual([1, 2]);
  });

  it('stops after maxAttempts with the last failure in the message', async () => {
    let calls = 0;
    const err = await withRetry(
      async () => {
        calls += 1;
        throw failure(`busy ${calls}`, true, 503);
      },
      { policy: fast, describe: 'azure:c: save keys/1', classify },
    ).catch((e: unknown) => e);
    expect(calls).toBe(4);
    expect(err).toBeInstanceOf(VaultBackendError);
    expect((err as VaultBackendError).message).toBe('azure:c: save keys/1 failed after 4 attempts: busy 4');
    expect((err as VaultBackendError).attempts).toBe(4);
    expect((err as VaultBackendError).transient).toBe(true);
    expect((err as VaultBackendError).status).toBe(503);
  });

  it('does not retry a permanent failure, and lets pass-through errors out untouched', async () => {
    let calls = 0;
    const err = await withRetry(
      async () => {
        calls += 1;
        throw failure('forbidden', false, 403);
      },
      { policy: fast, describe: 'op', classify },
    ).catch((e: unknown) => e);
    expect(calls).toBe(1);
    expect((err as VaultBackendError).message).toBe('op failed: forbidden');
    expect((err as VaultBackendError).attempts).toBe(1);

    const own = new RangeError('mine');
    await expect(
      withRetry(
        async () => {
          throw own;
        },
        { policy: fast, describe: 'op', classify, passThrough: (e) => e === own },
      ),
    ).rejects.toBe(own);
  });

  it('gives a stalled attempt a deadline and retries it', async () => {
    const runner = new RetryRunner('test:x', fast, 30, classify, undefined);
    let calls = 0;
    const out = await runner.run('load', 0, (signal) => {
      calls += 1;
      if (calls === 1) {
        // never settles by itself: only the deadline ends it
        return new Promise((_, reject) =>
          signal.addEventListener('abort', () => reject(new Error('aborted'))),
        );
      }
      return Promise.resolve('second');
    });
    expect(out).toBe('second');
    expect(calls).toBe(2);
  });
});

describe('backoff', () => {
  it('grows exponentially with jitter, within [half, all] of the step, capped', () => {
    const policy = { maxAttempts: 10, baseDelayMs: 100, maxDelayMs: 1000 };
    for (let i = 0; i < 50; i++) {
      const d1 = backoffDelay(policy, 1);
      const d3 = backoffDelay(policy, 3);
      const d9 = backoffDelay(policy, 9);
      expect(d1).toBeGreaterThanOrEqual(50);
      expect(d1).toBeLessThanOrEqual(100);
      expect(d3).toBeGreaterThanOrEqual(200);
      expect(d3).toBeLessThanOrEqual(400);
      expect(d9).toBeGreaterThanOrEqual(500);
      expect(d9).toBeLessThanOrEqual(1000);
    }
  });

  it("honours a server's Retry-After, up to the cap", () => {
    const policy = { maxAttempts: 10, baseDelayMs: 10, maxDelayMs: 5000 };
    expect(backoffDelay(policy, 1, 3000)).toBe(3000);
    expect(backoffDelay(policy, 1, 60_000)).toBe(5000);
    expect(parseRetryAfter('2')).toBe(2000);
    expect(parseRetryAfter(undefined)).toBeUndefined();
    expect(parseRetryAfter('soon')).toBeUndefined();
    const at = parseRetryAfter(new Date(Date.now() + 10_000).toUTCString())!;
    expect(at).toBeGreaterThan(8000);
    expect(at).toBeLessThanOrEqual(10_000);
  });
});

describe('classification helpers', () => {
  it('treats 408, 429 and 5xx (but 501) as transient', () => {
    for (const s of [408, 429, 500, 502, 503, 504]) expect(isTransientStatus(s), String(s)).toBe(true);
    for (const s of [400, 401, 403, 404, 409, 412, 416, 501])
      expect(isTransientStatus(s), String(s)).toBe(false);
  });

  it('recognises network failures along the cause chain', () => {
    expect(isTransientNetworkError(Object.assign(new Error('x'), { code: 'ECONNRESET' }))).toBe(true);
    expect(
      isTransientNetworkError(
        new Error('outer', { cause: Object.assign(new Error('i'), { code: 'EPIPE' }) }),
      ),
    ).toBe(true);
    expect(isTransientNetworkError(new Error('socket hang up'))).toBe(true);
    expect(isTransientNetworkError(Object.assign(new Error('t'), { name: 'TimeoutError' }))).toBe(true);
    expect(isTransientNetworkError(Object.assign(new Error('x'), { code: 'ENOENT' }))).toBe(false);
    expect(isTransientNetworkError(new Error('bad request'))).toBe(false);
  });

  it('redacts secrets and signature-like parameters', () => {
    const key = 'c2VjcmV0LWFjY291bnQta2V5LXZhbHVl';
    const msg = redact(
      `failed for AccountKey=${key}; url https://a.blob.core.windows.net/c?sv=1&sig=abc%2Fdef&se=2 ` +
        'Authorization: SharedKey acct:deadbeef, X-Amz-Signature=123abc and secret hunter22',
      [key, 'hunter22'],
    );
    expect(msg).not.toContain(key);
    expect(msg).not.toContain('hunter22');
    expect(msg).not.toContain('abc%2Fdef');
    expect(msg).not.toContain('deadbeef');
    expect(msg).not.toContain('123abc');
    expect(msg).toContain('sig=***');
  });
});
