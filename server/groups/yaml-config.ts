import { Document, isMap, isSeq, LineCounter, type Node, parseDocument, Scalar, visit } from 'yaml';
import type { GroupView } from './group-rows.ts';
import { parseGroupEntry } from './group-spec.ts';
import type { ConfigIssue } from './issues.ts';
import type { PlanEntry } from './plan.ts';

/*
 * The declarative groups file (docs/groups.md):
 *
 *   groups:
 *     - name: file-servers
 *       members: [{ agent: alpha, path: /srv/data, kind: files }]
 *       disk: { retentionDays: 14, syncEvery: 15m, recoveryPoints: { days: [...], times: [...] } }
 *       online: { enabled: true, schedule: { daily: ["21:00"] }, retention: { daily: 30 } }
 *
 * Reading reports every problem with its place (path and line); writing produces the same
 * format, so an export applied to the same server changes nothing.
 */

export interface ParsedConfig {
  entries: PlanEntry[];
  /** Problems outside the group entries (top level); the entries carry their own. */
  issues: ConfigIssue[];
  /** The 1-based line of a path in the file, or of its nearest parent that is there. */
  lineOf(path: (string | number)[]): number | undefined;
}

/** Syntax errors come back as issues with line and column; nothing else is checked then. */
export function parseConfigYaml(text: string): ParsedConfig {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  const lineOf = (path: (string | number)[]) => {
    for (let p = path; ; p = p.slice(0, -1)) {
      let node: Node | undefined;
      try {
        node = (p.length ? doc.getIn(p, true) : doc.contents) as Node | undefined;
      } catch {
        node = undefined; // a path through a scalar
      }
      if (node?.range) return lineCounter.linePos(node.range[0]).line;
      if (p.length === 0) return undefined;
    }
  };
  if (doc.errors.length > 0) {
    const issues = doc.errors.map((e) => {
      const pos = e.linePos?.[0];
      // yaml's message repeats the position and quotes the source after it; keep the reason.
      const reason = e.message.replace(/ at line \d+, column \d+:[\s\S]*$/, '');
      return {
        path: [],
        message: `${pos ? `line ${pos.line}, column ${pos.col}: ` : ''}YAML syntax error: ${reason}`,
        code: 'INVALID_INPUT' as const,
      };
    });
    return { entries: [], issues, lineOf };
  }

  const data: unknown = doc.toJS({ maxAliasCount: 1000 });
  const issues: ConfigIssue[] = [];
  const issue = (path: (string | number)[], message: string) =>
    issues.push({ path, message, code: 'INVALID_INPUT' });
  if (data === null || data === undefined) {
    issue([], 'the file is empty; it must have "groups:" with a list of groups');
    return { entries: [], issues, lineOf };
  }
  if (typeof data !== 'object' || Array.isArray(data)) {
    issue([], 'the file must be a map with "groups:" at the top, holding a list of groups');
    return { entries: [], issues, lineOf };
  }
  const top = data as Record<string, unknown>;
  for (const key of Object.keys(top))
    if (key !== 'groups') issue([key], `unknown field "${key}" (the file has one top-level field, "groups")`);
  if (!('groups' in top)) issue(['groups'], 'is required: the list of groups');
  // "groups:" with nothing under it is an empty list: it changes nothing either way.
  const groups = top.groups ?? [];
  if (!Array.isArray(groups)) {
    issue(['groups'], 'must be a list of groups (each starting with "- name: ...")');
    return { entries: [], issues, lineOf };
  }
  const entries = groups.map((g, i) => ({ parsed: parseGroupEntry(g, ['groups', i]), at: ['groups', i] }));
  return { entries, issues, lineOf };
}

/** Adds the line of each issue that names a place in the file, and lists them in file order. */
export function locateIssues(config: ParsedConfig, issues: ConfigIssue[]): ConfigIssue[] {
  const located = issues.map((i) => (i.path.length && !i.line ? { ...i, line: config.lineOf(i.path) } : i));
  return located.sort((a, b) => (a.line ?? 0) - (b.line ?? 0)); // stable: same line keeps check order
}

/** All groups in the file format: what `holdfast export` writes and `holdfast apply` reads. */
export function groupsToYaml(groups: GroupView[], opts: { header?: boolean } = {}): string {
  const doc = new Document({
    groups: groups.map((g) => ({
      name: g.name,
      members: g.members.map((m) => ({ agent: m.agent, path: m.path, kind: m.kind })),
      disk: dropNulls(g.disk),
      online: g.online,
    })),
  });
  // Small collections on one line, as people write them: `{ days: [mon, fri], times: ["08:00"] }`.
  visit(doc, {
    Map(_, node) {
      if (depth(node) <= 2) node.flow = true;
    },
    Seq(_, node) {
      if (depth(node) <= 1) node.flow = true;
    },
    Scalar(_, node) {
      // Quoted, so that YAML 1.1 readers do not take 08:00 for a number of minutes.
      if (typeof node.value === 'string' && /^\d\d:\d\d$/.test(node.value)) node.type = Scalar.QUOTE_DOUBLE;
    },
  });
  if (opts.header ?? true)
    doc.commentBefore =
      ' Holdfast protection groups. Apply with: holdfast apply -f FILE [--dry-run]\n' +
      ' Groups not listed in a file are left as they are when it is applied.';
  return doc.toString({ lineWidth: 0 });
}

function depth(node: unknown): number {
  if (isMap(node)) return 1 + Math.max(0, ...node.items.map((p) => depth(p.value)));
  if (isSeq(node)) return 1 + Math.max(0, ...node.items.map(depth));
  return 0;
}

/** `expressFull: null` is the default: left out, as an administrator would. */
function dropNulls<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null)) as T;
}
