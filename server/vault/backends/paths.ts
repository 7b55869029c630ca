import { assertValidVaultPath, isValidVaultPath, type VaultFolder } from './backend.ts';
import { VaultConfigError } from './errors.ts';

/**
 * Object paths of the vault, the restic repository layout: `config`, `keys/<id>`,
 * `data/ab/<id>`, `index/<id>`, `snapshots/<id>`, `locks/<id>`. The remote backends keep
 * them as object names under an optional prefix (`<prefix>/data/ab/<id>`), as restic's own
 * s3 and azure backends do, so a restic client pointed at the same bucket/prefix reads them.
 */

export const VAULT_FOLDERS: readonly VaultFolder[] = ['data', 'index', 'snapshots', 'keys', 'locks'];

const SEGMENT = /^[A-Za-z0-9_-][A-Za-z0-9._-]*$/;

/** Throws for anything but a path of the layout (backend.ts), so nothing escapes the prefix. */
export const checkObjectPath = assertValidVaultPath;

export function checkFolder(folder: string): asserts folder is VaultFolder {
  if (!(VAULT_FOLDERS as readonly string[]).includes(folder)) {
    throw new RangeError(`invalid vault folder ${JSON.stringify(folder)}`);
  }
}

export function checkRange(range: { offset: number; length: number }): void {
  const { offset, length } = range;
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new RangeError(`invalid range offset=${offset} length=${length}`);
  }
}

/**
 * A prefix inside a bucket or container: `''` (the root) or slash-separated segments, with
 * leading and trailing slashes dropped.
 */
export function normalizePrefix(prefix: string | undefined): string {
  const p = (prefix ?? '').replace(/^\/+|\/+$/g, '');
  if (p === '') return '';
  if (!p.split('/').every((s) => SEGMENT.test(s) && s !== '.' && s !== '..')) {
    throw new VaultConfigError(`invalid vault prefix ${JSON.stringify(prefix)}`);
  }
  return p;
}

/** Object name ↔ vault path under a prefix. */
export class PrefixedNames {
  constructor(readonly prefix: string) {}
  key(path: string): string {
    return this.prefix ? `${this.prefix}/${path}` : path;
  }
  folderKey(folder: VaultFolder): string {
    return `${this.key(folder)}/`;
  }
  /** The vault path of an object name, or undefined for one outside the prefix or not a vault path. */
  path(key: string): string | undefined {
    const head = this.prefix ? `${this.prefix}/` : '';
    if (!key.startsWith(head)) return undefined;
    const p = key.slice(head.length);
    return isValidVaultPath(p) ? p : undefined;
  }
}
