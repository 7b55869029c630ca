import type { ApplyResult } from './apply.ts';
import type { PlanChange } from './plan.ts';

/*
 * Plans and results for people (`holdfast apply`, `group create/update`). Pure: the CLI imports
 * it, the server never needs it.
 */

const show = (v: unknown): string => (v === null || v === undefined ? '(none)' : JSON.stringify(v));

export function describeChange(c: PlanChange): string {
  switch (c.type) {
    case 'group-created':
      return `create group "${c.group}"`;
    case 'policy-changed':
      return `${c.group}: ${c.field}: ${show(c.from)} -> ${show(c.to)}`;
    case 'datasource-created':
      return `${c.group}: create datasource ${c.agent}:${c.path} (${c.kind})`;
    case 'member-added':
      return `${c.group}: add member ${c.agent}:${c.path} (${c.kind})`;
    case 'member-removed':
      return `${c.group}: remove member ${c.agent}:${c.path} (its recovery points stay)`;
    case 'recovery-point-pruned':
      return `${c.group}: prune recovery point ${c.rpId} of ${c.agent}:${c.path} from ${c.createdAt}`;
  }
}

export function formatApplyResult(r: ApplyResult): string {
  const lines: string[] = [];
  if (!r.changed) lines.push('no changes: the server already matches the file');
  else {
    lines.push(r.dryRun ? 'plan (dry run, nothing changed):' : 'applied:');
    for (const c of r.changes) lines.push(`  ${describeChange(c)}`);
    const pruned = r.changes.filter((c) => c.type === 'recovery-point-pruned').length;
    if (pruned > 0)
      lines.push(
        `${r.dryRun ? 'would prune' : 'pruned'} ${pruned} recovery point${pruned === 1 ? '' : 's'} that the new retention no longer keeps`,
      );
  }
  if (r.untouched.length > 0) lines.push(`left as they are (not in the file): ${r.untouched.join(', ')}`);
  for (const e of r.manifestErrors) lines.push(`warning: manifest of ${e.rpId} not removed: ${e.error}`);
  return `${lines.join('\n')}\n`;
}
