import { randomUUID } from 'node:crypto';
import { and, desc, eq, sql } from 'drizzle-orm';
import type { Db, Tx } from '../db/database.ts';
import { alerts, type alertSeverities } from '../db/schema.ts';

export type AlertRow = typeof alerts.$inferSelect;
export type AlertSeverity = (typeof alertSeverities)[number];

/** What an alert is about; `subject` names the thing, e.g. `datasource:<id>`. */
export type AlertKind =
  | 'backup-failed'
  | 'rpo-missed'
  | 'agent-unreachable'
  | 'replica-inconsistent'
  | 'verify-corruption'
  | 'store-full';

/**
 * Raises an alert, or refreshes the message of the one already active for (kind, subject):
 * a condition that persists is one alert, not one per check.
 */
export async function raiseAlert(
  db: Db | Tx,
  input: { kind: AlertKind; severity: AlertSeverity; subject: string; message: string },
): Promise<void> {
  await db
    .insert(alerts)
    .values({ id: randomUUID(), ...input })
    .onConflictDoUpdate({
      target: [alerts.kind, alerts.subject],
      targetWhere: sql`state = 'active'`,
      set: { message: input.message, severity: input.severity, updatedAt: sql`now()` },
    });
}

/** The condition cleared: its active alert (if any) becomes resolved. Returns how many were. */
export async function resolveAlert(db: Db | Tx, kind: AlertKind, subject: string): Promise<number> {
  const rows = await db
    .update(alerts)
    .set({ state: 'resolved', resolvedAt: sql`now()`, updatedAt: sql`now()` })
    .where(and(eq(alerts.kind, kind), eq(alerts.subject, subject), eq(alerts.state, 'active')))
    .returning({ id: alerts.id });
  return rows.length;
}

export async function listAlerts(db: Db, opts: { all?: boolean } = {}): Promise<AlertRow[]> {
  return db
    .select()
    .from(alerts)
    .where(opts.all ? undefined : eq(alerts.state, 'active'))
    .orderBy(desc(alerts.raisedAt))
    .limit(1000);
}

export function alertView(a: AlertRow) {
  return {
    id: a.id,
    kind: a.kind,
    severity: a.severity,
    subject: a.subject,
    message: a.message,
    state: a.state,
    raisedAt: a.raisedAt.toISOString(),
    updatedAt: a.updatedAt.toISOString(),
    resolvedAt: a.resolvedAt?.toISOString() ?? null,
  };
}
export type AlertView = ReturnType<typeof alertView>;
