const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

/** "500ms", "90s", "30m", "24h", "7d" -> milliseconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+)(ms|[smhd])$/.exec(text.trim());
  if (!m) throw new Error(`duration must look like 90s, 30m, 24h or 7d, got "${text}"`);
  return Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
}
