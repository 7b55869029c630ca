import os from 'node:os';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalBackend } from '../backends/local-backend.ts';
import { newMasterKey } from './crypto.ts';
import { formatGoTime } from './go-time.ts';
import {
  acquireLock,
  isStaleLock,
  type LockInfo,
  listLocks,
  removeStaleLocks,
  VaultLockedError,
} from './locks.ts';
import { tempDir } from './restic-cli.test-helpers.ts';
import { saveJsonFile } from './unpacked.ts';

const key = newMasterKey();
let dir: { dir: string; cleanup: () => Promise<void> };
let ctx: { backend: LocalBackend; key: typeof key };
beforeEach(async () => {
  dir = await tempDir('holdfast-locks-');
  ctx = { backend: new LocalBackend(dir.dir), key };
});
afterEach(async () => {
  await dir.cleanup();
});

const fast = { recheckDelayMs: 5 };

function foreignLock(over: Partial<LockInfo>): LockInfo {
  return {
    time: formatGoTime(new Date()),
    exclusive: false,
    hostname: 'some-other-host',
    username: 'restic-user',
    pid: 4242,
    uid: 1000,
    gid: 1000,
    ...over,
  };
}

describe('locks', () => {
  it('writes restic lock JSON, lets shared locks coexist, and removes them on release', async () => {
    const a = await acquireLock(ctx, { exclusive: false, ...fast });
    const b = await acquireLock(ctx, { exclusive: false, ...fast });
    const locks = await listLocks(ctx);
    expect(locks.map((l) => l.id).sort()).toEqual([a.id, b.id].sort());
    expect(locks[0]!.info).toMatchObject({ exclusive: false, hostname: os.hostname(), pid: process.pid });
    expect(Object.keys(locks[0]!.info).slice(0, 5)).toEqual([
      'time',
      'exclusive',
      'hostname',
      'username',
      'pid',
    ]);
    await a.release();
    await b.release();
    await b.release(); // twice is harmless
    expect(await listLocks(ctx)).toEqual([]);
  });

  it('refuses an exclusive lock while another lock is held, naming the holder and its time', async () => {
    const time = formatGoTime(new Date(Date.now() - 60_000));
    await saveJsonFile(ctx.backend, key, 'locks', foreignLock({ time }));
    const err = await acquireLock(ctx, { exclusive: true, ...fast }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VaultLockedError);
    expect((err as Error).message).toContain(
      `by PID 4242 on some-other-host by restic-user, lock created at ${time}`,
    );
    // and wrote nothing of its own
    expect(await listLocks(ctx)).toHaveLength(1);
  });

  it('refuses a shared lock while an exclusive one is held', async () => {
    await saveJsonFile(ctx.backend, key, 'locks', foreignLock({ exclusive: true }));
    await expect(acquireLock(ctx, { exclusive: false, ...fast })).rejects.toThrow(
      /already locked exclusively by PID 4242/,
    );
  });

  it('ignores stale locks: older than 30 minutes, or from a dead process on this host; and empty files', async () => {
    await saveJsonFile(
      ctx.backend,
      key,
      'locks',
      foreignLock({ exclusive: true, time: formatGoTime(Date.now() - 31 * 60_000) }),
    );
    await saveJsonFile(
      ctx.backend,
      key,
      'locks',
      foreignLock({ exclusive: true, hostname: os.hostname(), pid: 2 ** 22 + 12345 }),
    );
    await ctx.backend.save(`locks/${'e'.repeat(64)}`, Buffer.alloc(0));
    const lock = await acquireLock(ctx, { exclusive: true, ...fast });
    await lock.release();
    expect(isStaleLock(foreignLock({ time: formatGoTime(Date.now() - 29 * 60_000) }))).toBe(false);
    expect(isStaleLock(foreignLock({ hostname: os.hostname(), pid: process.pid }))).toBe(false);
  });

  it('removeStaleLocks deletes only stale locks', async () => {
    const old = await saveJsonFile(
      ctx.backend,
      key,
      'locks',
      foreignLock({ time: formatGoTime(Date.now() - 40 * 60_000) }),
    );
    const fresh = await saveJsonFile(ctx.backend, key, 'locks', foreignLock({}));
    expect(await removeStaleLocks(ctx)).toEqual([old]);
    expect((await listLocks(ctx)).map((l) => l.id)).toEqual([fresh]);
  });

  it('refresh writes a new lock file with a new time and removes the old one', async () => {
    let now = new Date(Date.UTC(2030, 0, 1));
    const lock = await acquireLock(ctx, { exclusive: false, ...fast, now: () => now });
    const first = lock.id;
    now = new Date(Date.UTC(2030, 0, 1, 0, 5));
    await lock.refresh();
    expect(lock.id).not.toBe(first);
    const locks = await listLocks(ctx);
    expect(locks).toEqual([{ id: lock.id, info: expect.objectContaining({ time: '2030-01-01T00:05:00Z' }) }]);
    await lock.release();
    await expect(lock.refresh()).rejects.toThrow(/released/);
  });

  it('of two processes racing for an exclusive lock, at most one wins and the loser leaves nothing', async () => {
    const results = await Promise.allSettled([
      acquireLock(ctx, { exclusive: true, recheckDelayMs: 50 }),
      acquireLock(ctx, { exclusive: true, recheckDelayMs: 50 }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    expect(won.length).toBeLessThanOrEqual(1);
    expect(results.some((r) => r.status === 'rejected' && r.reason instanceof VaultLockedError)).toBe(true);
    expect(await listLocks(ctx)).toHaveLength(won.length);
  });

  it('refuses to guess when a lock file cannot be read', async () => {
    await ctx.backend.save(
      `locks/${'d'.repeat(64)}`,
      Buffer.from('garbage that is not encrypted JSON at all'),
    );
    await expect(acquireLock(ctx, { exclusive: false, ...fast })).rejects.toThrow(
      /cannot read lock locks\/dddd/,
    );
  });
});
