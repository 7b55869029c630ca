import type { Db } from '../db/database.ts';
import type { ManifestStore } from '../manifest/manifest-store.ts';
import { removeManifests } from '../retention/prune-points.ts';
import { listGroupViews, loadState, lockGroups } from './group-rows.ts';
import { issuesError } from './issues.ts';
import { executePlan, type PlanChange, planGroups } from './plan.ts';
import { groupsToYaml, locateIssues, parseConfigYaml } from './yaml-config.ts';

/*
 * `holdfast apply -f groups.yaml`: the file says what the groups it lists must be. Everything is
 * checked first (syntax, every field, agents, datasources claimed twice or by a group the file
 * does not list); with any problem nothing changes. Otherwise the whole file is applied in one
 * transaction: groups created or updated, datasources created, members moved, and the recovery
 * points a shorter retention no longer keeps pruned. Groups the file does not list are left
 * alone. Applying the same file again changes nothing.
 */

export interface ApplyResult {
  dryRun: boolean;
  /** False when the server already matched the file. */
  changed: boolean;
  changes: PlanChange[];
  /** Groups on the server that the file does not list: left as they are. */
  untouched: string[];
  /** Manifests of pruned points that could not be removed (GC removes them later). */
  manifestErrors: { rpId: string; error: string }[];
}

export async function applyConfig(
  deps: { db: Db; manifests: ManifestStore },
  yaml: string,
  opts: { dryRun?: boolean; now?: Date } = {},
): Promise<ApplyResult> {
  const dryRun = opts.dryRun ?? false;
  const config = parseConfigYaml(yaml);
  const outcome = 'nothing was applied';
  // Syntax errors: there is no structure to check further.
  if (config.entries.length === 0 && config.issues.length > 0) throw issuesError(config.issues, outcome);

  const result = await deps.db.transaction(async (tx) => {
    await lockGroups(tx);
    const state = await loadState(tx);
    const plan = await planGroups(tx, state, config.entries, 'apply', opts.now ?? new Date());
    const issues = locateIssues(config, [...config.issues, ...plan.issues]);
    if (issues.length > 0) throw issuesError(issues, outcome);
    if (!dryRun) await executePlan(tx, plan);
    const listed = new Set(config.entries.map((e) => e.parsed.name));
    return {
      plan,
      untouched: [...state.groups.keys()].filter((n) => !listed.has(n)).sort(),
    };
  });
  const manifestErrors = dryRun
    ? []
    : await removeManifests(
        deps.manifests,
        result.plan.prune.map((p) => p.rpId),
      );
  return {
    dryRun,
    changed: result.plan.changes.length > 0,
    changes: result.plan.changes,
    untouched: result.untouched,
    manifestErrors,
  };
}

/** Every group, in the file format. */
export async function exportConfig(db: Db): Promise<string> {
  return groupsToYaml(await listGroupViews(db));
}
