import { sql } from 'drizzle-orm';
import {
  bigint,
  boolean,
  index,
  integer,
  jsonb,
  pgTable,
  primaryKey,
  smallint,
  text,
  timestamp,
  uniqueIndex,
} from 'drizzle-orm/pg-core';

/*
 * Metadata schema, shared by PostgreSQL and PGlite. Changes go through `npm run db:generate`
 * (drizzle-kit), which writes a reviewed SQL migration into migrations/.
 */

const ts = (name: string) => timestamp(name, { withTimezone: true, mode: 'date' });
const bytes = (name: string) => bigint(name, { mode: 'number' });

/** Administrator API tokens; only their SHA-256 is kept. */
export const adminTokens = pgTable('admin_tokens', {
  id: text('id').primaryKey(),
  tokenHash: text('token_hash').notNull().unique(),
  createdAt: ts('created_at').notNull().defaultNow(),
});

export const agents = pgTable('agents', {
  id: text('id').primaryKey(),
  name: text('name').notNull().unique(),
  hostname: text('hostname').notNull().default(''),
  /** SHA-256 of the agent's credential; the credential itself lives only on the agent. */
  secretHash: text('secret_hash').notNull(),
  agentVersion: text('agent_version').notNull().default(''),
  /** Bandwidth throttling for this agent's uploads (protocol/throttle-policy.ts); null = unlimited. */
  throttle: jsonb('throttle').$type<Record<string, unknown>>(),
  createdAt: ts('created_at').notNull().defaultNow(),
  lastSeenAt: ts('last_seen_at'),
  revokedAt: ts('revoked_at'),
});

export const enrollmentTokens = pgTable('enrollment_tokens', {
  id: text('id').primaryKey(),
  tokenHash: text('token_hash').notNull().unique(),
  createdAt: ts('created_at').notNull().defaultNow(),
  expiresAt: ts('expires_at').notNull(),
  usedAt: ts('used_at'),
  usedByAgentId: text('used_by_agent_id').references(() => agents.id),
});

export const datasources = pgTable(
  'datasources',
  {
    id: text('id').primaryKey(),
    agentId: text('agent_id')
      .notNull()
      .references(() => agents.id),
    path: text('path').notNull(),
    kind: text('kind', { enum: ['files', 'image'] }).notNull(),
    blockSize: integer('block_size').notNull(),
    /** Compress blocks on the wire (and so in the store). */
    compress: boolean('compress').notNull().default(true),
    /** Shell commands the agent runs before and after each backup (application consistency). */
    preScript: text('pre_script'),
    postScript: text('post_script'),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [uniqueIndex('datasources_agent_path').on(t.agentId, t.path)],
);

export const jobStates = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof jobStates)[number];

export const jobs = pgTable(
  'jobs',
  {
    id: text('id').primaryKey(),
    type: text('type', { enum: ['backup', 'restore'] }).notNull(),
    state: text('state', { enum: jobStates }).notNull().default('queued'),
    /** The agent that does the work: the source for a backup, the target for a restore. */
    agentId: text('agent_id')
      .notNull()
      .references(() => agents.id),
    datasourceId: text('datasource_id').references(() => datasources.id),
    /** Job-specific input: `{ full }` for a backup, `{ rpId, target, paths }` for a restore. */
    params: jsonb('params').notNull().default(sql`'{}'::jsonb`),
    createdAt: ts('created_at').notNull().defaultNow(),
    startedAt: ts('started_at'),
    finishedAt: ts('finished_at'),
    bytesScanned: bytes('bytes_scanned').notNull().default(0),
    bytesSent: bytes('bytes_sent').notNull().default(0),
    bytesStored: bytes('bytes_stored').notNull().default(0),
    /** Blocks received over all attempts: with resume, acknowledged blocks are never sent twice. */
    blocksSent: integer('blocks_sent').notNull().default(0),
    files: integer('files').notNull().default(0),
    /** Live progress of a running job: bytes covered so far, of bytesTotal when known. */
    bytesDone: bytes('bytes_done').notNull().default(0),
    bytesTotal: bytes('bytes_total'),
    warnings: jsonb('warnings').$type<string[]>().notNull().default(sql`'[]'::jsonb`),
    error: text('error'),
    /** The recovery point a backup produced. */
    rpId: text('rp_id'),
    /** Backups resume after a dropped link or a server restart: how often, and since when. */
    attempts: integer('attempts').notNull().default(0),
    interruptedAt: ts('interrupted_at'),
  },
  (t) => [index('jobs_state').on(t.state), index('jobs_agent').on(t.agentId)],
);

export const recoveryPoints = pgTable(
  'recovery_points',
  {
    id: text('id').primaryKey(),
    datasourceId: text('datasource_id')
      .notNull()
      .references(() => datasources.id),
    jobId: text('job_id').notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
    tier: text('tier', { enum: ['disk', 'vault'] })
      .notNull()
      .default('disk'),
    kind: text('kind', { enum: ['files', 'image'] }).notNull(),
    consistency: text('consistency', {
      enum: ['app-consistent', 'file-consistent', 'crash-consistent'],
    }).notNull(),
    /** Logical size: the sum of all file sizes (or the image size). */
    bytes: bytes('bytes').notNull(),
    files: integer('files').notNull(),
    blocks: integer('blocks').notNull(),
  },
  (t) => [index('recovery_points_ds').on(t.datasourceId, t.createdAt)],
);

/**
 * Chunk index: one row per distinct block in the disk chunk store, pointing into a pack file.
 * A row is inserted only after the pack bytes it points at are durable.
 */
export const chunks = pgTable(
  'chunks',
  {
    hash: text('hash').primaryKey(),
    pack: text('pack').notNull(),
    offset: bigint('offset', { mode: 'number' }).notNull(),
    /** Raw block length. */
    size: integer('size').notNull(),
    /** Length as stored (after compression). */
    storedSize: integer('stored_size').notNull(),
    /** 0 = raw, 1 = zstd. */
    encoding: smallint('encoding').notNull(),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [index('chunks_pack').on(t.pack)],
);

/**
 * Which agent has proven it holds which block (by uploading it). An agent may skip sending a
 * block only if a row here says it owns it: naming a hash never grants access to a block
 * another agent uploaded.
 */
export const agentChunks = pgTable(
  'agent_chunks',
  {
    agentId: text('agent_id')
      .notNull()
      .references(() => agents.id),
    hash: text('hash').notNull(),
  },
  (t) => [primaryKey({ columns: [t.agentId, t.hash] })],
);
