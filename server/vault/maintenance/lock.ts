import { VaultError } from '../format/errors.ts';
import { LOCK_REFRESH_MS, type VaultLock } from '../format/locks.ts';
import type { VaultRepository } from '../format/repository.ts';

/**
 * Runs `fn` under a restic-compatible lock: the caller's (`lock`, which must be exclusive when
 * `exclusive` is asked for) or one taken here, refreshed every 5 minutes and released after.
 */
export async function withLock<T>(
  repo: VaultRepository,
  options: { exclusive: boolean; lock?: VaultLock; recheckDelayMs?: number },
  fn: () => Promise<T>,
): Promise<T> {
  if (options.lock) {
    if (options.exclusive && !options.lock.exclusive)
      throw new VaultError('this operation needs an exclusive vault lock; the lock passed in is shared');
    return fn();
  }
  const lock = await repo.lock({
    exclusive: options.exclusive,
    autoRefreshMs: LOCK_REFRESH_MS,
    ...(options.recheckDelayMs !== undefined && { recheckDelayMs: options.recheckDelayMs }),
  });
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}
