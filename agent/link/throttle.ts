import {
  nextChangeAt,
  rateAt,
  type ThrottlePolicy,
  validateThrottlePolicy,
} from '../../protocol/throttle-policy.ts';

/**
 * Token-bucket limiter for the agent's send path.
 *
 * Tokens are bytes. They accrue at the scheduled rate up to a bucket of `burstSeconds`
 * worth of traffic, which absorbs the jitter of sending and of timers without letting the
 * average drift. A sender pays before it sends: take(n) resolves once n tokens are there
 * and removes them. A piece larger than the bucket is allowed; while it heads the queue
 * the bucket may fill up to its size, so it waits exactly as long as its own size takes.
 *
 * Why this is accurate: tokens are computed from elapsed monotonic time at every wake-up,
 * never from how long a timer was asked to sleep, so late timers cost latency but not
 * throughput. In steady state the k-th grant happens at (bytes granted so far - bucket) /
 * rate, whatever the piece size.
 *
 * Why there is no polling: waiters form one FIFO queue (so a large piece is not starved
 * by small ones) and only its head has a timer, set for the earlier of "enough tokens"
 * and the schedule's next rate change. setPolicy, abort and grants re-plan that one timer.
 */

export interface ThrottleOptions {
  /** Monotonic milliseconds; defaults to performance.now(). */
  now?: () => number;
  /** Wall clock for the local-time schedule; defaults to new Date(). */
  clock?: () => Date;
  /** Bucket size in seconds of traffic at the current rate; default 0.25. */
  burstSeconds?: number;
}

interface Waiter {
  bytes: number;
  resolve(): void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** setTimeout's largest delay; longer waits re-plan when it fires. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export class Throttle {
  private policy: ThrottlePolicy;
  private readonly now: () => number;
  private readonly clock: () => Date;
  private readonly burstSeconds: number;

  private rate: number | undefined;
  /** Wall-clock window [rateFrom, rateUntil) for which `rate` was looked up. */
  private rateFrom = 0;
  private rateUntil = 0;
  private tokens = 0;
  private refilledAt: number;
  private readonly queue: Waiter[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(policy: ThrottlePolicy, opts: ThrottleOptions = {}) {
    this.policy = validateThrottlePolicy(policy);
    this.now = opts.now ?? (() => performance.now());
    this.clock = opts.clock ?? (() => new Date());
    this.burstSeconds = opts.burstSeconds ?? 0.25;
    if (!Number.isFinite(this.burstSeconds) || this.burstSeconds < 0) {
      throw new RangeError(`Throttle: burstSeconds must be a finite number >= 0 (got ${opts.burstSeconds})`);
    }
    this.refilledAt = this.now();
    this.lookUpRate();
    // A fresh link has been idle, so it starts with a full bucket.
    this.tokens = this.capacity();
  }

  /** The limit in force now, in bytes per second; undefined = unlimited. */
  get currentRate(): number | undefined {
    this.refill();
    return this.rate;
  }

  /** Applies at once, also to takes already waiting. */
  setPolicy(policy: ThrottlePolicy): void {
    const next = validateThrottlePolicy(policy);
    // Credit the time so far at the old rate before the new one takes over.
    this.refill();
    this.policy = next;
    this.switchRate();
    this.pump();
  }

  /**
   * Resolves when `bytes` may be sent. With no limit in force and nobody queued it
   * resolves without a timer; `signal` aborts the wait with an AbortError.
   */
  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (!Number.isFinite(bytes) || bytes < 0) {
      throw new RangeError(`Throttle.take: bytes must be a finite number >= 0 (got ${bytes})`);
    }
    if (signal?.aborted) throw abortError(signal);
    if (this.queue.length === 0) {
      this.refill();
      if (this.rate === undefined || bytes === 0) return;
      if (this.tokens >= bytes) {
        this.tokens -= bytes;
        return;
      }
    }
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = { bytes, resolve, signal, onAbort: undefined };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.queue.indexOf(waiter);
          if (i < 0) return;
          this.queue.splice(i, 1);
          reject(abortError(signal));
          // The next waiter may already be satisfied, or needs its own timer.
          if (i === 0) this.pump();
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.queue.push(waiter);
      this.pump();
    });
  }

  private capacity(): number {
    return this.rate === undefined ? 0 : this.rate * this.burstSeconds;
  }

  /** How far tokens may accrue: the bucket, or the size of the piece at the head of the queue. */
  private ceiling(): number {
    return Math.max(this.capacity(), this.queue[0]?.bytes ?? 0);
  }

  /** Accrues tokens for the time since the last refill, then follows the schedule. */
  private refill(): void {
    const t = this.now();
    const elapsed = Math.max(0, t - this.refilledAt);
    this.refilledAt = t;
    if (this.rate !== undefined) {
      this.tokens = Math.min(this.ceiling(), this.tokens + (elapsed * this.rate) / 1000);
    }
    const wall = this.clock().getTime();
    // Also re-read the schedule if the wall clock went backwards (NTP step, manual change).
    if (wall >= this.rateUntil || wall < this.rateFrom) this.switchRate();
  }

  private lookUpRate(): void {
    const wall = this.clock();
    this.rate = rateAt(this.policy, wall);
    this.rateFrom = wall.getTime();
    this.rateUntil = nextChangeAt(this.policy, wall).getTime();
  }

  private switchRate(): void {
    const wasUnlimited = this.rate === undefined;
    this.lookUpRate();
    if (this.rate === undefined) return;
    // An unlimited link behaves as one whose bucket refills instantly, so it arrives full;
    // a slower rate gets a smaller bucket, so a burst cannot outlast burstSeconds.
    this.tokens = wasUnlimited ? this.ceiling() : Math.min(this.tokens, this.ceiling());
  }

  /** Grants what can be granted, then sets the one timer for the head of the queue. */
  private pump(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.refill();
    for (let head = this.queue[0]; head; head = this.queue[0]) {
      if (this.rate !== undefined) {
        if (this.tokens < head.bytes) break;
        this.tokens -= head.bytes;
      }
      this.queue.shift();
      if (head.onAbort) head.signal?.removeEventListener('abort', head.onAbort);
      head.resolve();
    }
    const head = this.queue[0];
    if (!head || this.rate === undefined) return;
    const tokensDue = Math.ceil(((head.bytes - this.tokens) * 1000) / this.rate);
    const rateChangeDue = this.rateUntil - this.clock().getTime();
    // At least 1 ms: a zero delay after float rounding would spin.
    const delay = Math.min(MAX_TIMER_MS, Math.max(1, Math.min(tokensDue, rateChangeDue)));
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pump();
    }, delay);
  }
}

function abortError(signal: AbortSignal): Error {
  const err = new Error('throttle wait aborted', { cause: signal.reason });
  err.name = 'AbortError';
  return err;
}
