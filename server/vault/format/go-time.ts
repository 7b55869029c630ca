/**
 * Timestamps as restic writes them: Go's time.Time JSON form, RFC 3339 with up to nine
 * fractional digits, trailing zeros dropped ("2024-05-01T10:00:00.5Z",
 * "2015-01-02T18:10:13.48307196+01:00"). We always write UTC ('Z'); restic reads any offset.
 */

/** Something that names an instant: a Date, epoch milliseconds (fractions keep sub-ms precision), or epoch nanoseconds. */
export type TimeInput = Date | number | bigint;

export function formatGoTime(t: TimeInput): string {
  const ns = toEpochNanos(t);
  let secs = ns / 1_000_000_000n;
  let frac = ns % 1_000_000_000n;
  if (frac < 0n) {
    frac += 1_000_000_000n;
    secs -= 1n;
  }
  const base = new Date(Number(secs) * 1000).toISOString().slice(0, 19);
  if (frac === 0n) return `${base}Z`;
  return `${base}.${frac.toString().padStart(9, '0').replace(/0+$/, '')}Z`;
}

export function toEpochNanos(t: TimeInput): bigint {
  if (typeof t === 'bigint') return t;
  const ms = t instanceof Date ? t.getTime() : t;
  if (!Number.isFinite(ms)) throw new Error(`invalid time ${String(t)}`);
  const whole = Math.floor(ms);
  // the fractional part of a float millisecond value is only good to about a microsecond
  return BigInt(whole) * 1_000_000n + BigInt(Math.round((ms - whole) * 1_000_000));
}

const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;

/** Parses an RFC 3339 timestamp (any offset, up to nanoseconds) to epoch nanoseconds. */
export function parseGoTime(s: string): bigint {
  const m = RFC3339.exec(s);
  if (!m) throw new Error(`not an RFC 3339 time: ${JSON.stringify(s)}`);
  const [, y, mo, d, h, mi, sec, frac, , sign, oh, om] = m;
  // not Date.UTC: it maps years 0-99 to 1900-1999, and Go's zero time is year 1
  const day = new Date(0);
  day.setUTCFullYear(Number(y), Number(mo) - 1, Number(d));
  day.setUTCHours(Number(h), Number(mi), Number(sec), 0);
  const utcMs = day.getTime();
  const offsetMin = sign ? (sign === '-' ? -1 : 1) * (Number(oh) * 60 + Number(om)) : 0;
  const nanos = BigInt((frac ?? '').padEnd(9, '0') || '0');
  return (BigInt(utcMs) - BigInt(offsetMin) * 60_000n) * 1_000_000n + nanos;
}

/** Epoch milliseconds (with a fractional part) of an RFC 3339 timestamp. */
export function goTimeToMs(s: string): number {
  const ns = parseGoTime(s);
  // whole milliseconds exactly, then the sub-millisecond rest (a single division would round)
  return Number(ns / 1_000_000n) + Number(ns % 1_000_000n) / 1_000_000;
}
