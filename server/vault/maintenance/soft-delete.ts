import { VaultError } from '../format/errors.ts';
import type { VaultLock } from '../format/locks.ts';
import type { VaultRepository } from '../format/repository.ts';
import { parseHoldfastTags, type Snapshot } from '../format/snapshot.ts';
import { withLock } from './lock.ts';

/**
 * Soft delete of recovery points in the vault. A deleted recovery point stays recoverable for
 * a window (14 days by default) and is then purged. The state lives in the vault itself, so a
 * server rebuilt from the vault alone (disaster recovery) sees it: the snapshot is rewritten
 * with one more tag, `holdfast-deleted:<ISO 8601 UTC time>`, as `restic tag --add` would do
 * (the new file gets `original` = the first snapshot's id, like restic's). The new file is
 * saved before the old one is removed, so a crash leaves at worst both versions, which the
 * next softDelete/undelete of the same id reconciles.
 *
 * A soft-deleted snapshot is an ordinary snapshot to restic: `restic check` walks it, `restic
 * restore` restores it, prune keeps its data. `restic snapshots --tag holdfast` lists it too;
 * the tag says it is deleted.
 */

export const SOFT_DELETE_TAG_PREFIX = 'holdfast-deleted:';
export const DEFAULT_SOFT_DELETE_WINDOW_MS = 14 * 24 * 60 * 60_000;

/** When the snapshot was soft-deleted, or undefined if it is not. */
export function softDeletedAt(tags: readonly string[] | undefined): Date | undefined {
  let out: Date | undefined;
  for (const tag of tags ?? []) {
    if (!tag.startsWith(SOFT_DELETE_TAG_PREFIX)) continue;
    const d = new Date(tag.slice(SOFT_DELETE_TAG_PREFIX.length));
    // an unreadable time still marks it deleted; treat it as deleted long ago
    const t = Number.isNaN(d.getTime()) ? new Date(0) : d;
    if (!out || t < out) out = t;
  }
  return out;
}

export interface SnapshotRewrite {
  /** The snapshot file that was replaced (now removed). */
  oldId: string;
  /** The snapshot file that replaces it: the caller's mirror should point at this one. */
  newId: string;
  recoveryPointId?: string;
  datasourceId?: string;
}

export interface SoftDeleteResult {
  rewritten: SnapshotRewrite[];
  /** Already in the requested state (left as they are). */
  unchanged: string[];
}

export interface SnapshotLockOptions {
  /**
   * A lock the caller already holds (then none is taken). softDelete/undelete need at least a
   * shared one; purge an exclusive one. Default: take (and release) one.
   */
  lock?: VaultLock;
}

/**
 * Marks snapshots deleted at `at`. Ids that are already soft-deleted are left alone (their
 * first deletion time stands). Unknown ids throw before anything is written.
 */
export function softDelete(
  repo: VaultRepository,
  snapshotIds: string[],
  at: Date,
  options: SnapshotLockOptions = {},
): Promise<SoftDeleteResult> {
  if (Number.isNaN(at.getTime())) throw new RangeError('softDelete: invalid time');
  const tag = `${SOFT_DELETE_TAG_PREFIX}${at.toISOString()}`;
  return rewriteSnapshots(repo, snapshotIds, options, (s) =>
    softDeletedAt(s.tags) ? undefined : [...(s.tags ?? []), tag],
  );
}

/** Clears the soft-delete mark (the recovery point is live again). Ids not deleted are left alone. */
export function undelete(
  repo: VaultRepository,
  snapshotIds: string[],
  options: SnapshotLockOptions = {},
): Promise<SoftDeleteResult> {
  return rewriteSnapshots(repo, snapshotIds, options, (s) =>
    softDeletedAt(s.tags) ? (s.tags ?? []).filter((t) => !t.startsWith(SOFT_DELETE_TAG_PREFIX)) : undefined,
  );
}

/** Soft-deleted snapshots whose window has passed at `now`: ready for purge. */
export function expiredSoftDeletes<T extends { id: string; tags?: string[] }>(
  snapshots: T[],
  now: Date,
  windowMs: number = DEFAULT_SOFT_DELETE_WINDOW_MS,
): (T & { deletedAt: Date; purgeAfter: Date })[] {
  const out: (T & { deletedAt: Date; purgeAfter: Date })[] = [];
  for (const s of snapshots) {
    const deletedAt = softDeletedAt(s.tags);
    if (!deletedAt) continue;
    const purgeAfter = new Date(deletedAt.getTime() + windowMs);
    if (purgeAfter.getTime() <= now.getTime()) out.push({ ...s, deletedAt, purgeAfter });
  }
  return out;
}

export interface PurgeResult {
  removed: { id: string; recoveryPointId?: string; datasourceId?: string }[];
  /** Ids that were not there (already purged): not an error, so a retried purge succeeds. */
  missing: string[];
}

/**
 * Removes snapshot files for good (restic's `forget`), under an exclusive lock as restic's
 * forget takes. Their data is freed by the next pruneVault. Does not require the snapshots to be
 * soft-deleted first: retention may forget directly.
 */
export async function purge(
  repo: VaultRepository,
  snapshotIds: string[],
  options: SnapshotLockOptions = {},
): Promise<PurgeResult> {
  return withLock(repo, { exclusive: true, ...(options.lock && { lock: options.lock }) }, async () => {
    const result: PurgeResult = { removed: [], missing: [] };
    for (const id of new Set(snapshotIds)) {
      const path = `snapshots/${id}`;
      if (!(await repo.backend.stat(path))) {
        result.missing.push(id);
        continue;
      }
      let tags: ReturnType<typeof parseHoldfastTags>;
      try {
        tags = parseHoldfastTags((await repo.loadSnapshot(id)).tags);
      } catch {
        tags = undefined; // a damaged snapshot file can still be purged
      }
      await repo.backend.remove(path);
      result.removed.push({
        id,
        ...(tags?.recoveryPointId !== undefined && { recoveryPointId: tags.recoveryPointId }),
        ...(tags?.datasourceId !== undefined && { datasourceId: tags.datasourceId }),
      });
    }
    return result;
  });
}

/**
 * Rewrites each snapshot with new tags (undefined: leave it). Reconciles a crash between
 * "save new" and "remove old": if a version of the same snapshot (same lineage: `original ??
 * id`, same tree and time) already has the wanted tags, the old file is just removed.
 */
async function rewriteSnapshots(
  repo: VaultRepository,
  snapshotIds: string[],
  options: SnapshotLockOptions,
  newTags: (s: Snapshot) => string[] | undefined,
): Promise<SoftDeleteResult> {
  return withLock(repo, { exclusive: false, ...(options.lock && { lock: options.lock }) }, async () => {
    const all = await repo.listSnapshots();
    const byId = new Map(all.map((s) => [s.id, s.snapshot]));
    const ids = [...new Set(snapshotIds)];
    const unknown = ids.filter((id) => !byId.has(id));
    if (unknown.length > 0)
      throw new VaultError(
        `no such snapshot in the vault: ${unknown.map((id) => id.slice(0, 12)).join(', ')}`,
      );
    const result: SoftDeleteResult = { rewritten: [], unchanged: [] };
    for (const id of ids) {
      const snap = byId.get(id)!;
      const tags = newTags(snap);
      if (!tags) {
        result.unchanged.push(id);
        continue;
      }
      const lineage = snap.original ?? id;
      const twin = all.find(
        (o) =>
          o.id !== id &&
          (o.snapshot.original ?? o.id) === lineage &&
          o.snapshot.tree === snap.tree &&
          o.snapshot.time === snap.time &&
          sameTags(o.snapshot.tags ?? [], tags),
      );
      let newId: string;
      if (twin) newId = twin.id;
      else {
        const next: Snapshot = { ...snap, original: lineage };
        if (tags.length > 0) next.tags = tags;
        else delete next.tags;
        newId = await repo.saveSnapshot(next);
      }
      await repo.backend.remove(`snapshots/${id}`);
      const ht = parseHoldfastTags(snap.tags);
      result.rewritten.push({
        oldId: id,
        newId,
        ...(ht?.recoveryPointId !== undefined && { recoveryPointId: ht.recoveryPointId }),
        ...(ht?.datasourceId !== undefined && { datasourceId: ht.datasourceId }),
      });
    }
    return result;
  });
}

function sameTags(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}
