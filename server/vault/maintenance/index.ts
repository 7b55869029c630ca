/** Vault maintenance: long-term retention, soft delete, prune and check (docs/vault-retention.md). */
export * from './check.ts';
export * from './lock.ts';
export * from './long-term-retention.ts';
export * from './prune.ts';
export * from './soft-delete.ts';
