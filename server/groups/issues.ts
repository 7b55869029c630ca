import { AppError, type ErrorCode } from '../errors.ts';
import { formatPath } from './policy.ts';

/*
 * Problems found while checking a group definition or a groups file. Everything is checked
 * before anything changes, and every problem is reported together, so an administrator fixes
 * a file in one pass instead of one error per apply.
 */

export interface ConfigIssue {
  /** Where in the input, e.g. ["groups", 1, "disk", "retentionDays"]. */
  path: (string | number)[];
  message: string;
  /** What kind of problem: a bad value, an unknown agent, a datasource taken by another group. */
  code: ErrorCode;
  /** 1-based line in the YAML file, when the input was one. */
  line?: number;
}

export function issueText(i: ConfigIssue): string {
  const where = formatPath(i.path);
  return `${where ? `${where}: ` : ''}${i.message}${i.line ? ` (line ${i.line})` : ''}`;
}

/**
 * One error for all issues. Its code is the issues' code when they share one (a lone conflict is
 * a CONFLICT), else INVALID_INPUT.
 */
export function issuesError(issues: ConfigIssue[], outcome = 'nothing was changed'): AppError {
  const codes = new Set(issues.map((i) => i.code));
  const code = codes.size === 1 ? issues[0]!.code : 'INVALID_INPUT';
  if (issues.length === 1) return new AppError(code, `${issueText(issues[0]!)}; ${outcome}`);
  return new AppError(
    code,
    `${issues.length} problems, ${outcome}:\n${issues.map((i) => `  - ${issueText(i)}`).join('\n')}`,
  );
}
