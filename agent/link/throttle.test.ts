import { afterEach, describe, expect, it, vi } from 'vitest';
import type { ThrottlePolicy } from '../../protocol/throttle-policy.ts';
import { Throttle } from './throttle.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
/** One rate around the clock, so tests on real time do not depend on when they run. */
const flat = (bps: number): ThrottlePolicy => ({ workHoursBps: bps, nonWorkHoursBps: bps, weekendBps: bps });
// Monday 2 June 2025, local time.
const monday = (h: number, m = 0, s = 0) => new Date(2025, 5, 2, h, m, s);

/** Fake timers drive both clocks the throttle reads. */
function fakeClocks(start: Date) {
  vi.useFakeTimers({ now: start });
  return { now: () => Date.now(), clock: () => new Date() };
}

/** Records when each take resolves, in fake-clock milliseconds since the start. */
function sender(t: Throttle, total: number, piece: number) {
  const t0 = Date.now();
  const grants: { at: number; bytes: number }[] = [];
  const done = (async () => {
    for (let sent = 0; sent < total; sent += piece) {
      await t.take(piece);
      grants.push({ at: Date.now() - t0, bytes: piece });
    }
  })();
  return { grants, done };
}

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

describe('Throttle', () => {
  it('does not delay, nor set a timer, when no limit is in force', async () => {
    const clocks = fakeClocks(monday(12));
    // Limited only at weekends, and this is a Monday.
    for (const policy of [{}, { weekendBps: MiB }]) {
      const t = new Throttle(policy, clocks);
      expect(t.currentRate).toBeUndefined();
      let resolved = 0;
      for (let i = 0; i < 100; i++) void t.take(64 * MiB).then(() => resolved++);
      await Promise.resolve();
      expect(resolved).toBe(100);
      expect(vi.getTimerCount()).toBe(0);
    }
  });

  it('holds 2 MiB/s for 6 MiB in 256 KiB pieces, on real time', async () => {
    const rate = 2 * MiB;
    const t = new Throttle(flat(rate));
    const burstBytes = 0.25 * rate; // the bucket starts full
    const start = performance.now();
    for (let sent = 0; sent < 6 * MiB; sent += 256 * KiB) await t.take(256 * KiB);
    const seconds = (performance.now() - start) / 1000;
    // 6 MiB at 2 MiB/s is 3 s, of which the initial bucket lets 0.25 s through at once.
    expect(seconds + 0.25).toBeGreaterThan(3 * 0.9);
    expect(seconds + 0.25).toBeLessThan(3 * 1.1);
    // The steady part keeps to the configured rate more tightly than that.
    expect(Math.abs((6 * MiB - burstBytes) / seconds / rate - 1)).toBeLessThan(0.05);
  });

  it.each([64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB])(
    'keeps every window of 2 s or more within 5%% of the rate for %i-byte pieces',
    async (piece) => {
      const rate = 4 * MiB;
      const t = new Throttle(flat(rate), fakeClocks(monday(12)));
      const { grants, done } = sender(t, 48 * MiB, piece);
      await vi.advanceTimersByTimeAsync(20_000);
      await done;
      // Paying before sending, the bytes granted after grant i up to grant j took exactly
      // the time between the two grants at the configured rate. Windows start after the
      // initial bucket, which an idle link has saved up and spends at once by design.
      const afterBurst = Math.max(
        0,
        grants.findLastIndex((g) => g.at === 0),
      );
      let windows = 0;
      let worst = 0;
      for (let i = afterBurst; i < grants.length; i++) {
        let bytes = 0;
        for (let j = i + 1; j < grants.length; j++) {
          bytes += grants[j]!.bytes;
          const ms = grants[j]!.at - grants[i]!.at;
          if (ms < 2000) continue;
          windows++;
          worst = Math.max(worst, Math.abs((bytes * 1000) / ms / rate - 1));
        }
      }
      expect(windows).toBeGreaterThan(0);
      expect(worst).toBeLessThan(0.05);
    },
  );

  it('lets one take larger than the bucket wait for its own size', async () => {
    const t = new Throttle(flat(MiB), fakeClocks(monday(12)));
    let resolved = false;
    void t.take(4 * MiB).then(() => {
      resolved = true;
    });
    // The full 256 KiB bucket counts towards it: 3.75 MiB to go at 1 MiB/s.
    await vi.advanceTimersByTimeAsync(3749);
    expect(resolved).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(resolved).toBe(true);
  });

  it('finishes early when setPolicy lifts the limit mid-transfer', async () => {
    const t = new Throttle(flat(MiB), fakeClocks(monday(12)));
    const { grants, done } = sender(t, 4 * MiB, 256 * KiB);
    let finished = false;
    void done.then(() => {
      finished = true;
    });
    await vi.advanceTimersByTimeAsync(1000);
    // The full bucket, then one piece every 250 ms.
    expect(grants.map((g) => g.at)).toEqual([0, 250, 500, 750, 1000]);
    t.setPolicy({});
    await vi.advanceTimersByTimeAsync(0);
    expect(finished).toBe(true);
    expect(grants).toHaveLength(16);
    expect(grants.at(-1)!.at).toBe(1000); // instead of 3750 ms
    expect(vi.getTimerCount()).toBe(0);
  });

  it('re-plans a waiting take when setPolicy lowers the rate', async () => {
    const t = new Throttle(flat(MiB), { ...fakeClocks(monday(12)), burstSeconds: 0 });
    let resolved = false;
    void t.take(MiB).then(() => {
      resolved = true;
    });
    await vi.advanceTimersByTimeAsync(500);
    t.setPolicy(flat(256 * KiB));
    expect(t.currentRate).toBe(256 * KiB);
    expect(vi.getTimerCount()).toBe(1);
    // Half paid at 1 MiB/s; the other 512 KiB at 256 KiB/s take 2 s more.
    await vi.advanceTimersByTimeAsync(1999);
    expect(resolved).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    expect(resolved).toBe(true);
  });

  it('switches rate at the end of work hours with one timer per wait', async () => {
    const t = new Throttle(
      { workHoursBps: MiB, nonWorkHoursBps: 4 * MiB },
      { ...fakeClocks(monday(17, 59, 30)), burstSeconds: 0 },
    );
    const setTimeoutSpy = vi.spyOn(globalThis, 'setTimeout');
    let resolvedAt: Date | undefined;
    void t.take(60 * MiB).then(() => {
      resolvedAt = new Date();
    });
    await vi.advanceTimersByTimeAsync(29_999);
    expect(t.currentRate).toBe(MiB);
    await vi.advanceTimersByTimeAsync(1);
    expect(t.currentRate).toBe(4 * MiB);
    await vi.advanceTimersByTimeAsync(10_000);
    // 30 MiB by 18:00 at 1 MiB/s, the other 30 MiB at 4 MiB/s in 7.5 s.
    expect(resolvedAt).toEqual(new Date(2025, 5, 2, 18, 0, 7, 500));
    // One timer up to the boundary, one for the tokens still missing after it.
    expect(setTimeoutSpy).toHaveBeenCalledTimes(2);
  });

  it('releases waiting takes when a schedule boundary lifts the limit', async () => {
    const t = new Throttle({ workHoursBps: MiB }, fakeClocks(monday(17, 59)));
    let resolvedAt: Date | undefined;
    void t.take(100 * MiB).then(() => {
      resolvedAt = new Date();
    });
    await vi.advanceTimersByTimeAsync(120_000);
    expect(resolvedAt).toEqual(monday(18));
  });

  it('rejects an aborted take with an AbortError and lets the next one through', async () => {
    const t = new Throttle(flat(MiB), { ...fakeClocks(monday(12)), burstSeconds: 0 });
    const ac = new AbortController();
    const big = t.take(2 * MiB, ac.signal);
    let smallResolved = false;
    void t.take(256 * KiB).then(() => {
      smallResolved = true;
    });
    await vi.advanceTimersByTimeAsync(500);
    // Waiters are served in order, so the small take waits behind the big one.
    expect(smallResolved).toBe(false);
    ac.abort();
    await expect(big).rejects.toMatchObject({ name: 'AbortError' });
    // The 512 KiB accrued so far now go to the small take.
    await vi.advanceTimersByTimeAsync(0);
    expect(smallResolved).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('rejects at once when the signal is already aborted', async () => {
    const t = new Throttle(flat(MiB), fakeClocks(monday(12)));
    const reason = new Error('job cancelled');
    await expect(t.take(64 * MiB, AbortSignal.abort(reason))).rejects.toMatchObject({
      name: 'AbortError',
      cause: reason,
    });
    expect(vi.getTimerCount()).toBe(0);
  });

  it('refuses a bad policy and a bad size', async () => {
    expect(() => new Throttle({ workHoursBps: -1 })).toThrow(/workHoursBps must be/);
    const t = new Throttle({});
    expect(() => t.setPolicy({ workDays: [9] })).toThrow(/workDays must be/);
    await expect(t.take(-1)).rejects.toThrow(/bytes must be a finite number >= 0/);
  });
});
