import { VaultFormatError } from './errors.ts';
import { formatGoTime, type TimeInput } from './go-time.ts';
import { isId } from './id.ts';

/**
 * Snapshot files (doc/design.rst, "Snapshots"; restic's internal/restic/snapshot.go): one
 * encrypted JSON document per snapshot in snapshots/, named by the SHA-256 of the stored bytes.
 * `tree` is the root tree blob; `paths` what was backed up.
 *
 * Holdfast maps a recovery point to one snapshot: hostname = agent name, paths = [datasource
 * path], tags = holdfastTags(...). Fields restic adds that we do not know (summary,
 * program_version, ...) are kept when a snapshot is read.
 */

export interface Snapshot {
  time: string;
  parent?: string;
  tree: string;
  paths: string[];
  hostname?: string;
  username?: string;
  uid?: number;
  gid?: number;
  excludes?: string[];
  tags?: string[];
  original?: string;
  [other: string]: unknown;
}

export function newSnapshot(input: {
  time: TimeInput;
  tree: string;
  paths: string[];
  hostname: string;
  username?: string;
  tags?: string[];
  parent?: string;
}): Snapshot {
  if (!isId(input.tree)) throw new VaultFormatError('snapshot tree must be a 64-hex tree id');
  if (input.paths.length === 0) throw new VaultFormatError('a snapshot needs at least one path');
  // restic's field order
  return {
    time: formatGoTime(input.time),
    ...(input.parent && { parent: input.parent }),
    tree: input.tree,
    paths: [...input.paths],
    hostname: input.hostname,
    ...(input.username && { username: input.username }),
    ...(input.tags && input.tags.length > 0 && { tags: [...input.tags] }),
  };
}

export function snapshotFromJson(value: unknown, what = 'snapshot'): Snapshot {
  const s = value as Partial<Snapshot> | null;
  if (!s || typeof s !== 'object') throw new VaultFormatError(`${what} is not an object`);
  if (typeof s.time !== 'string') throw new VaultFormatError(`${what} has no time`);
  if (!isId(s.tree)) throw new VaultFormatError(`${what} has no tree`);
  return { ...s, paths: Array.isArray(s.paths) ? s.paths : [] } as Snapshot;
}

/**
 * Tags that tie a snapshot to Holdfast's records: `holdfast`, `ds:<datasource id>`,
 * `group:<protection group>`, `rp:<recovery point id>`. restic splits `--tag a,b` at commas, so
 * a comma (and '%', the escape character) in a value is percent-encoded, keeping every tag
 * usable in `restic snapshots --tag ...`.
 */
export function holdfastTags(input: {
  datasourceId: string;
  group?: string;
  recoveryPointId: string;
}): string[] {
  const tags = ['holdfast', `ds:${escapeTag(input.datasourceId)}`];
  if (input.group) tags.push(`group:${escapeTag(input.group)}`);
  tags.push(`rp:${escapeTag(input.recoveryPointId)}`);
  return tags;
}

/** Reads holdfastTags back; undefined when the snapshot is not Holdfast's. */
export function parseHoldfastTags(
  tags: string[] | undefined,
): { datasourceId?: string; group?: string; recoveryPointId?: string } | undefined {
  if (!tags?.includes('holdfast')) return undefined;
  const out: { datasourceId?: string; group?: string; recoveryPointId?: string } = {};
  for (const tag of tags) {
    if (tag.startsWith('ds:')) out.datasourceId = unescapeTag(tag.slice(3));
    else if (tag.startsWith('group:')) out.group = unescapeTag(tag.slice(6));
    else if (tag.startsWith('rp:')) out.recoveryPointId = unescapeTag(tag.slice(3));
  }
  return out;
}

function escapeTag(v: string): string {
  return v.replace(/%/g, '%25').replace(/,/g, '%2C');
}

function unescapeTag(v: string): string {
  return v.replace(/%2C/gi, ',').replace(/%25/g, '%');
}
