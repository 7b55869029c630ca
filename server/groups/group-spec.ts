import { z } from 'zod';
import { normalizeDatasourcePath } from '../datasources/datasources.ts';
import type { ConfigIssue } from './issues.ts';
import { type GroupPolicy, groupPolicySchema, inputIssues, unlessMissing } from './policy.ts';

/*
 * One group as written by an administrator (a YAML entry, a REST body): name, members and
 * policy. Parsed part by part, so that a bad policy does not hide a bad member and every
 * problem of the entry is reported at once.
 */

export type MemberKind = 'files' | 'image';
export interface MemberSpec {
  agent: string;
  /** Normalized (normalizeDatasourcePath): one datasource has one spelling. */
  path: string;
  kind: MemberKind;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const groupNameSchema = z.string({ error: unlessMissing(() => 'must be a text') }).regex(NAME, {
  error: (i) =>
    `must be 1 to 63 letters, digits, ".", "_" or "-", starting with a letter or digit, got ${JSON.stringify(i.input)}`,
});

export const memberSchema = z.strictObject(
  {
    agent: z
      .string({ error: unlessMissing(() => 'must be an agent name') })
      .min(1, { error: 'must be an agent name' })
      .max(63, { error: 'must be at most 63 characters' }),
    path: z
      .string({ error: unlessMissing(() => "must be an absolute path on the agent's machine") })
      .max(4096, { error: 'must be at most 4096 characters' })
      .transform((p, ctx) => {
        try {
          return normalizeDatasourcePath(p);
        } catch {
          ctx.addIssue({
            code: 'custom',
            message: `must be an absolute path on the agent's machine, got ${JSON.stringify(p)}`,
          });
          return z.NEVER;
        }
      }),
    kind: z
      .enum(['files', 'image'], {
        error: (i) =>
          `must be "files" (a folder tree) or "image" (a disk image), got ${JSON.stringify(i.input)}`,
      })
      .default('files'),
  },
  { error: 'must be { agent: NAME, path: /absolute/path, kind: files | image }' },
);

const entrySchema = z.strictObject(
  {
    name: z.unknown().optional(),
    members: z.unknown().optional(),
    disk: z.unknown().optional(),
    online: z.unknown().optional(),
  },
  { error: 'must be a group: { name, members, disk, online }' },
);

export interface ParsedEntry {
  /** Each part is present when it parsed; issues list what did not. */
  name?: string;
  /** The members that parsed, with where each is in the input (for messages). */
  members: { member: MemberSpec; at: (string | number)[] }[];
  policy?: GroupPolicy;
  issues: ConfigIssue[];
}

const issuesAt = (base: (string | number)[], error: z.ZodError): ConfigIssue[] =>
  inputIssues(error).map((i) => ({ path: [...base, ...i.path], message: i.message, code: 'INVALID_INPUT' }));

/** Checks one group entry; `at` is where it is in the input (e.g. ["groups", 2]). */
export function parseGroupEntry(input: unknown, at: (string | number)[]): ParsedEntry {
  const out: ParsedEntry = { members: [], issues: [] };
  const shape = entrySchema.safeParse(input);
  if (!shape.success) {
    out.issues.push(...issuesAt(at, shape.error));
    // Unknown fields only: the known ones can still be checked.
    if (!(input && typeof input === 'object' && !Array.isArray(input))) return out;
  }
  const entry = input as Record<string, unknown>;

  const name = groupNameSchema.safeParse(entry.name);
  if (name.success) out.name = name.data;
  else out.issues.push(...issuesAt([...at, 'name'], name.error));

  const members = entry.members ?? [];
  if (!Array.isArray(members)) {
    out.issues.push({
      path: [...at, 'members'],
      message: 'must be a list of { agent, path, kind }',
      code: 'INVALID_INPUT',
    });
  } else {
    members.forEach((m, index) => {
      const r = memberSchema.safeParse(m);
      if (r.success) out.members.push({ member: r.data, at: [...at, 'members', index] });
      else out.issues.push(...issuesAt([...at, 'members', index], r.error));
    });
  }

  const policy = groupPolicySchema.safeParse(
    entry.online === undefined ? { disk: entry.disk } : { disk: entry.disk, online: entry.online },
  );
  if (policy.success) out.policy = policy.data;
  else out.issues.push(...issuesAt(at, policy.error));
  return out;
}

export const memberLabel = (m: { agent: string; path: string }) => `${m.agent}:${m.path}`;
