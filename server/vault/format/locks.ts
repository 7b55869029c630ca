import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VaultBackend } from '../backends/backend.ts';
import type { MasterKey } from './crypto.ts';
import { VaultError } from './errors.ts';
import { formatGoTime, goTimeToMs } from './go-time.ts';
import { loadJsonFile, saveJsonFile } from './unpacked.ts';

/**
 * restic's repository locks (doc/design.rst, "Locks"; restic's internal/restic/lock.go): a
 * lock is an encrypted JSON file locks/<id> {time, exclusive, hostname, username, pid, uid,
 * gid}. Any number of shared locks may coexist; an exclusive lock excludes every other lock.
 * restic takes a shared lock for backup and restore and an exclusive one for prune and check,
 * so Holdfast's writers take shared locks and its pruner an exclusive one, and neither
 * tramples restic running on the same vault.
 *
 * A lock is stale, and ignored, when its time is more than 30 minutes old, or when it was made
 * on this host by a process that no longer exists. Holders refresh their lock (write a new
 * file with a new time, remove the old one) well within 30 minutes; restic does so every 5.
 *
 * Acquiring follows restic: look for conflicting locks, write ours, wait a moment, look
 * again (two processes racing both see each other's file), and back out on a conflict.
 */

export interface LockInfo {
  time: string;
  exclusive: boolean;
  hostname: string;
  username: string;
  pid: number;
  uid?: number;
  gid?: number;
}

export const STALE_LOCK_MS = 30 * 60_000;
/** restic refreshes every 5 minutes; so does autoRefresh by default. */
export const LOCK_REFRESH_MS = 5 * 60_000;

/** The vault is locked by someone else (restic or another Holdfast process). */
export class VaultLockedError extends VaultError {
  constructor(
    readonly holder: LockInfo,
    readonly lockId: string,
  ) {
    super(
      `vault is already locked ${holder.exclusive ? 'exclusively ' : ''}by PID ${holder.pid} on ${holder.hostname || '(unknown host)'}` +
        ` by ${holder.username || '(unknown user)'}, lock created at ${holder.time} (lock ${lockId.slice(0, 8)})`,
    );
  }
}

export interface LockContext {
  backend: VaultBackend;
  key: MasterKey;
}

export interface AcquireLockOptions {
  exclusive: boolean;
  /** Pause between writing our lock and looking again; restic's is 200 ms. */
  recheckDelayMs?: number;
  /** Refresh the lock on a timer until release(); default off. Pass LOCK_REFRESH_MS for restic's cadence. */
  autoRefreshMs?: number;
  /** For tests and for naming: defaults to this process and host. */
  hostname?: string;
  now?: () => Date;
}

export function isStaleLock(
  info: LockInfo,
  now: Date = new Date(),
  thisHost: string = os.hostname(),
): boolean {
  let created: number;
  try {
    created = goTimeToMs(info.time);
  } catch {
    return false; // unreadable time: do not guess it away
  }
  if (now.getTime() - created > STALE_LOCK_MS) return true;
  if (info.hostname !== thisHost) return false;
  return !processExists(info.pid);
}

function processExists(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists, it is just not ours to signal
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Every lock file with its content; empty files (an interrupted upload on some backends) are skipped, as restic does. */
export async function listLocks(ctx: LockContext): Promise<{ id: string; info: LockInfo }[]> {
  const out: { id: string; info: LockInfo }[] = [];
  for await (const { path, size } of ctx.backend.list('locks')) {
    if (size === 0) continue;
    const id = path.slice('locks/'.length);
    let info: LockInfo;
    try {
      info = (await loadJsonFile(ctx.backend, ctx.key, 'locks', id)) as LockInfo;
    } catch (err) {
      if ((err as { code?: string }).code === 'VAULT_NOT_FOUND') continue; // released meanwhile
      throw new VaultError(`cannot read lock ${path}: ${(err as Error).message}`, { cause: err });
    }
    out.push({ id, info });
  }
  return out;
}

/**
 * Deletes stale locks (restic's `unlock`): what a crashed Holdfast process or restic run left
 * behind. Fresh locks, however old their holder's job, are left alone. Returns the ids removed.
 */
export async function removeStaleLocks(ctx: LockContext, now: Date = new Date()): Promise<string[]> {
  const removed: string[] = [];
  for (const { id, info } of await listLocks(ctx)) {
    if (!isStaleLock(info, now)) continue;
    await ctx.backend.remove(`locks/${id}`);
    removed.push(id);
  }
  return removed;
}

async function findConflict(
  ctx: LockContext,
  exclusive: boolean,
  ownId?: string,
): Promise<VaultLockedError | undefined> {
  for (const { id, info } of await listLocks(ctx)) {
    if (id === ownId) continue;
    if (isStaleLock(info)) continue;
    if (exclusive || info.exclusive) return new VaultLockedError(info, id);
  }
  return undefined;
}

export class VaultLock {
  private timer: NodeJS.Timeout | undefined;
  private released = false;

  constructor(
    private readonly ctx: LockContext,
    private info: LockInfo,
    private lockId: string,
    private readonly now: () => Date,
  ) {}

  get id(): string {
    return this.lockId;
  }

  get exclusive(): boolean {
    return this.info.exclusive;
  }

  /** Writes a fresh lock file with the current time, then removes the previous one. */
  async refresh(): Promise<void> {
    if (this.released) throw new VaultError('lock was already released');
    const info = { ...this.info, time: formatGoTime(this.now()) };
    const id = await saveJsonFile(this.ctx.backend, this.ctx.key, 'locks', info);
    const old = this.lockId;
    this.info = info;
    this.lockId = id;
    if (old !== id) await this.ctx.backend.remove(`locks/${old}`);
  }

  startAutoRefresh(everyMs: number): void {
    this.stopAutoRefresh();
    this.timer = setInterval(() => {
      this.refresh().catch(() => {
        // a failed refresh is retried at the next tick; the lock only goes stale after 30 min
      });
    }, everyMs);
    this.timer.unref();
  }

  private stopAutoRefresh(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.stopAutoRefresh();
    await this.ctx.backend.remove(`locks/${this.lockId}`);
  }
}

/**
 * Takes a shared or exclusive lock, or throws VaultLockedError naming the holder. Does not wait
 * for a held lock to go away: the caller decides whether to retry later.
 */
export async function acquireLock(ctx: LockContext, options: AcquireLockOptions): Promise<VaultLock> {
  const now = options.now ?? (() => new Date());
  const before = await findConflict(ctx, options.exclusive);
  if (before) throw before;
  const user = safeUserInfo();
  const info: LockInfo = {
    time: formatGoTime(now()),
    exclusive: options.exclusive,
    hostname: options.hostname ?? os.hostname(),
    username: user.username,
    pid: process.pid,
    ...(user.uid > 0 && { uid: user.uid }),
    ...(user.gid > 0 && { gid: user.gid }),
  };
  const id = await saveJsonFile(ctx.backend, ctx.key, 'locks', info);
  await sleep(options.recheckDelayMs ?? 200);
  let after: VaultLockedError | undefined;
  try {
    after = await findConflict(ctx, options.exclusive, id);
  } catch (err) {
    await ctx.backend.remove(`locks/${id}`);
    throw err;
  }
  if (after) {
    await ctx.backend.remove(`locks/${id}`);
    throw after;
  }
  const lock = new VaultLock(ctx, info, id, now);
  if (options.autoRefreshMs) lock.startAutoRefresh(options.autoRefreshMs);
  return lock;
}

function safeUserInfo(): { username: string; uid: number; gid: number } {
  try {
    const u = os.userInfo();
    return { username: u.username, uid: u.uid, gid: u.gid };
  } catch {
    return { username: '', uid: 0, gid: 0 };
  }
}
