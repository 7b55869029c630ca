import { z } from 'zod';
import { AppError } from '../errors.ts';

/*
 * A protection group's policy, in the one shape used by the YAML file, the REST API,
 * `group show --json` and the database. Validation names the field and the allowed range:
 * "disk.retentionDays: must be a whole number of days from 1 to 448, got 500".
 */

export const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
export type Day = (typeof DAYS)[number];

export const MIN_SYNC_MINUTES = 15;
export const MAX_SYNC_MINUTES = 24 * 60;
export const MAX_RETENTION_DAYS = 448;

type IssueInput = { input?: unknown };
/** A custom message for a present but bad value; "is required" for a missing one. */
export const unlessMissing = (message: (i: IssueInput) => string) => (i: IssueInput) =>
  i.input === undefined ? 'is required' : message(i);

const time = z
  .string({ error: unlessMissing(() => 'must be a time of day "HH:MM"') })
  .regex(/^([01]\d|2[0-3]):[0-5]\d$/, {
    error: (i) => `must be a time of day "HH:MM" (00:00 to 23:59), got "${String(i.input)}"`,
  });

const day = z.enum(DAYS, {
  error: unlessMissing((i) => `must be one of ${DAYS.join(', ')}, got ${JSON.stringify(i.input)}`),
});

/** Unique, in week order (sun first) / time order: equal policies compare equal. */
const days = z
  .array(day, { error: unlessMissing(() => 'must be a list of days, e.g. [mon, tue]') })
  .min(1, { error: 'must name at least one day' })
  .transform((d) => DAYS.filter((x) => d.includes(x)));
const times = (max: number) =>
  z
    .array(time, { error: unlessMissing(() => 'must be a list of times, e.g. ["08:00", "20:00"]') })
    .min(1, { error: 'must name at least one time' })
    .transform((t) => [...new Set(t)].sort())
    .refine((t) => t.length <= max, { error: `must name at most ${max} different times` });

const wholeNumber = (what: string, min: number, max: number) => {
  const error = unlessMissing(
    (i) => `must be a whole number ${what}from ${min} to ${max}, got ${JSON.stringify(i.input)}`,
  );
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error });
};

/** "15m", "1h", "2h30m", "24h" -> minutes; "rp-only" -> null. Written back canonically. */
export function parseSyncEvery(text: string): number | null {
  if (text === 'rp-only') return null;
  const m = /^(?:(\d+)h)?(?:(\d+)m)?$/.exec(text);
  if (!m || (!m[1] && !m[2]))
    throw new Error(`must be a duration like 15m, 1h or 2h30m, or "rp-only", got "${text}"`);
  return Number(m[1] ?? 0) * 60 + Number(m[2] ?? 0);
}

export function formatMinutes(minutes: number): string {
  const h = Math.floor(minutes / 60);
  const m = minutes % 60;
  return `${h ? `${h}h` : ''}${m || !h ? `${m}m` : ''}`;
}

const syncEvery = z
  .union([z.string(), z.number()], { error: 'must be a duration from 15m to 24h, or "rp-only"' })
  .transform((v, ctx) => {
    const text = typeof v === 'number' ? `${v}m` : v.trim();
    let minutes: number | null;
    try {
      minutes = parseSyncEvery(text);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
    if (minutes === null) return 'rp-only';
    if (minutes < MIN_SYNC_MINUTES || minutes > MAX_SYNC_MINUTES) {
      ctx.addIssue({ code: 'custom', message: `must be from 15m to 24h, or "rp-only", got "${text}"` });
      return z.NEVER;
    }
    return formatMinutes(minutes);
  });

const consistencyCheck = z.discriminatedUnion(
  'when',
  [
    z.strictObject({ when: z.literal('needed') }),
    z.strictObject({
      when: z.literal('daily'),
      start: time,
      maxHours: wholeNumber('of hours ', 1, 24),
    }),
  ],
  { error: 'must be { when: needed } or { when: daily, start: "HH:MM", maxHours: 1..24 }' },
);

const diskPolicy = z.strictObject({
  retentionDays: wholeNumber('of days ', 1, MAX_RETENTION_DAYS),
  syncEvery: syncEvery.default('15m'),
  recoveryPoints: z.strictObject({ days, times: times(24) }),
  /** Optional full scan: every block re-read and compared (DPM's express full backup). */
  expressFull: z
    .strictObject({ days, times: times(4) })
    .nullable()
    .default(null),
  consistencyCheck: consistencyCheck.default({ when: 'needed' }),
});

const onlineSchedule = z.union(
  [
    z.strictObject({ daily: times(2) }),
    z.strictObject({ weekly: z.strictObject({ days, times: times(2) }) }),
  ],
  {
    error:
      'must be { daily: ["HH:MM", ...] } (at most 2 times) or { weekly: { days: [...], times: ["HH:MM"] } }',
  },
);

const onlineRetention = z.strictObject({
  daily: wholeNumber('of daily points ', 0, 9999).default(0),
  weekly: wholeNumber('of weekly points ', 0, 5163).default(0),
  monthly: wholeNumber('of monthly points ', 0, 1188).default(0),
  yearly: wholeNumber('of yearly points ', 0, 99).default(0),
});

const onlinePolicy = z
  .strictObject({
    enabled: z.boolean({ error: 'must be true or false' }).default(false),
    schedule: onlineSchedule.optional(),
    retention: onlineRetention.optional(),
  })
  .superRefine((o, ctx) => {
    if (!o.enabled) return;
    if (!o.schedule)
      ctx.addIssue({
        code: 'custom',
        path: ['schedule'],
        message: 'is required when online protection is enabled',
      });
    if (!o.retention)
      ctx.addIssue({
        code: 'custom',
        path: ['retention'],
        message: 'is required when online protection is enabled',
      });
    else if (o.retention.daily + o.retention.weekly + o.retention.monthly + o.retention.yearly === 0)
      ctx.addIssue({
        code: 'custom',
        path: ['retention'],
        message: 'must keep at least one point (daily, weekly, monthly or yearly)',
      });
  });

export const groupPolicySchema = z.strictObject({
  disk: diskPolicy,
  online: onlinePolicy.default({ enabled: false }),
});

export type GroupPolicy = z.output<typeof groupPolicySchema>;
export type DiskPolicy = GroupPolicy['disk'];
export type OnlinePolicy = GroupPolicy['online'];

/** One problem with an input, at a path inside it (e.g. ["disk", "recoveryPoints", "times", 1]). */
export interface InputIssue {
  path: (string | number)[];
  message: string;
}

/** `groups[0].disk.recoveryPoints.times[1]` (prefix "groups[0]"). */
export function formatPath(path: readonly PropertyKey[], prefix = ''): string {
  return path.reduce<string>(
    (acc, p) => (typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p)),
    prefix,
  );
}

/** Zod's issues as path + message, with "is required" and "unknown field" worded for people. */
export function inputIssues(error: z.ZodError): InputIssue[] {
  return error.issues.map((i) => ({
    path: i.path.filter((p): p is string | number => typeof p !== 'symbol'),
    message:
      i.code === 'unrecognized_keys'
        ? `unknown field${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `"${k}"`).join(', ')}`
        : i.code === 'invalid_type' && i.message.endsWith('received undefined')
          ? 'is required'
          : i.message,
  }));
}

/** "disk.recoveryPoints.times[1]: must be ...; online.retention: ..." (prefix e.g. "groups[0]"). */
export function formatIssues(error: z.ZodError, prefix = ''): string {
  return inputIssues(error)
    .map((i) => {
      const where = formatPath(i.path, prefix);
      return where ? `${where}: ${i.message}` : i.message;
    })
    .join('; ');
}

/** Validates a policy; INVALID_INPUT names every bad field (prefixed, e.g. `groups[0]`). */
export function parsePolicy(input: unknown, prefix = ''): GroupPolicy {
  const r = groupPolicySchema.safeParse(input);
  if (!r.success) throw new AppError('INVALID_INPUT', formatIssues(r.error, prefix));
  return r.data;
}

/** Minutes between syncs, or null for "only at recovery-point times". */
export function syncMinutes(disk: DiskPolicy): number | null {
  return parseSyncEvery(disk.syncEvery);
}
