import type { Entry } from '../../protocol/entry.ts';
import { isSafeRelativePath } from '../../protocol/entry.ts';
import { AppError } from '../errors.ts';

/**
 * Which manifest entries a restore of `paths` needs: each selected path, everything below it,
 * and the directories above it (so they are recreated with their own modes and times).
 * An empty selection means everything.
 */
export class PathSelection {
  private readonly paths: string[];
  private readonly ancestors = new Set<string>();
  private readonly matched = new Set<string>();

  constructor(paths: string[]) {
    this.paths = paths.map(normalizeSelectedPath);
    for (const p of this.paths) {
      const parts = p.split('/');
      for (let i = 1; i < parts.length; i++) this.ancestors.add(parts.slice(0, i).join('/'));
    }
  }

  includes(entry: Entry): boolean {
    if (this.paths.length === 0) return true;
    for (const p of this.paths) {
      if (entry.path === p || entry.path.startsWith(`${p}/`)) {
        this.matched.add(p);
        return true;
      }
    }
    return entry.type === 'dir' && this.ancestors.has(entry.path);
  }

  /** Selected paths that matched no entry: a typo should fail the restore, not restore nothing. */
  unmatched(): string[] {
    return this.paths.filter((p) => !this.matched.has(p));
  }
}

export function normalizeSelectedPath(p: string): string {
  const trimmed = p.replace(/^\/+|\/+$/g, '').replace(/\/{2,}/g, '/');
  if (!isSafeRelativePath(trimmed)) {
    throw new AppError(
      'INVALID_INPUT',
      `restore path "${p}" must name a path inside the recovery point, without ".."`,
    );
  }
  return trimmed;
}
