import { type Column, type SQL, sql } from 'drizzle-orm';

/*
 * Array parameters for `unnest(...)` inserts and `= any(...)` lookups: one statement with one
 * parameter per column instead of a multi-row VALUES list or an IN list of one parameter per
 * id. The hot paths (chunk index, block ownership, vault mirror) insert and look up thousands
 * of rows per transaction; building those as per-row query parts cost more CPU than the
 * database spent on them. Works the same on PostgreSQL and PGlite.
 */

/**
 * A PostgreSQL array literal of plain items: hex ids, enum words, numbers, null. Anything that
 * would need quoting is refused, so a literal can never be bent by its content.
 */
export function plainArray(values: readonly (string | number | null)[]): string {
  const items = values.map((v) => {
    if (v === null) return 'NULL';
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw new Error(`not a finite number for an array parameter: ${v}`);
      return String(v);
    }
    // NULL unquoted would read as a null item, not as the word
    if (!/^[0-9A-Za-z_-]+$/.test(v) || v.toUpperCase() === 'NULL')
      throw new Error(`not a plain array item: ${JSON.stringify(v)}`);
    return v;
  });
  return `{${items.join(',')}}`;
}

/**
 * `column = any(array)` for many hex ids or words: one parameter (drizzle's inArray makes one
 * per item, and building those cost the hot paths more than the query did).
 */
export function anyOf(column: Column, values: readonly string[]): SQL {
  return sql`${column} = any(${plainArray(values)}::text[])`;
}
