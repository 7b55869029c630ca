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

/**
 * Protection groups: datasources of any agents protected by one policy (server/groups/policy.ts).
 * The policy is stored validated, in the same shape as the YAML file and `group show --json`.
 */
export const protectionGroups = pgTable('protection_groups', {
  id: text('id').primaryKey(),
  name: text('name').notNull().unique(),
  policy: jsonb('policy').$type<Record<string, unknown>>().notNull(),
  createdAt: ts('created_at').notNull().defaultNow(),
  updatedAt: ts('updated_at').notNull().defaultNow(),
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
    /** The protection group this datasource belongs to (at most one). */
    groupId: text('group_id').references(() => protectionGroups.id, { onDelete: 'set null' }),
    /**
     * `inconsistent` when the server's newest copy is known to differ from the agent's data
     * (verify found corrupt or missing blocks); a consistency check sets it back.
     */
    replicaState: text('replica_state', { enum: ['consistent', 'inconsistent'] })
      .notNull()
      .default('consistent'),
    createdAt: ts('created_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('datasources_agent_path').on(t.agentId, t.path),
    index('datasources_group').on(t.groupId),
  ],
);

export const jobStates = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof jobStates)[number];
export const jobTypes = [
  'backup',
  'restore',
  'verify',
  'consistency-check',
  'gc',
  'online-backup',
  'vault-retention',
  'vault-check',
] as const;
/** Why a job exists: asked for by an administrator, due by a group's schedule, or started by the server. */
export const jobTriggers = ['manual', 'schedule', 'system'] as const;

export const jobs = pgTable(
  'jobs',
  {
    id: text('id').primaryKey(),
    type: text('type', { enum: jobTypes }).notNull(),
    state: text('state', { enum: jobStates }).notNull().default('queued'),
    trigger: text('trigger', { enum: jobTriggers }).notNull().default('manual'),
    /**
     * The agent that does the work: the source for a backup, the target for a restore. Null for
     * jobs of the server alone (verify, gc), which any server process sharing the database may run.
     */
    agentId: text('agent_id').references(() => agents.id),
    datasourceId: text('datasource_id').references(() => datasources.id, { onDelete: 'set null' }),
    groupId: text('group_id').references(() => protectionGroups.id, { onDelete: 'set null' }),
    /** Job-specific input: `{ full }` for a backup, `{ rpId, target, paths }` for a restore. */
    params: jsonb('params').notNull().default(sql`'{}'::jsonb`),
    /** Job-specific report of a finished job (what verify checked, what gc freed). */
    result: jsonb('result'),
    createdAt: ts('created_at').notNull().defaultNow(),
    /** Not started before this time: retries wait out their backoff here. */
    runAfter: ts('run_after').notNull().defaultNow(),
    /** Failing a queued job that cannot start by then (its agent stays offline; a window closes). */
    deadline: ts('deadline'),
    /** The server process running the job, and until when its claim holds unless renewed. */
    leaseOwner: text('lease_owner'),
    leaseUntil: ts('lease_until'),
    /** Failed runs retried so far, and how many retries this job gets. */
    retries: integer('retries').notNull().default(0),
    maxRetries: integer('max_retries').notNull().default(0),
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
  (t) => [
    index('jobs_state').on(t.state, t.runAfter),
    index('jobs_agent').on(t.agentId),
    index('jobs_datasource').on(t.datasourceId, t.createdAt),
    // The job list (newest first), and the upkeep's "when did the last gc / retention run".
    index('jobs_created').on(t.createdAt),
    index('jobs_type').on(t.type, t.createdAt),
    // One backup (or consistency check) of a datasource at a time, whichever process runs it.
    uniqueIndex('jobs_one_running_backup')
      .on(t.datasourceId)
      .where(sql`state = 'running' and type in ('backup', 'consistency-check')`),
  ],
);

export const recoveryPoints = pgTable(
  'recovery_points',
  {
    id: text('id').primaryKey(),
    datasourceId: text('datasource_id')
      .notNull()
      .references(() => datasources.id),
    jobId: text('job_id').notNull(),
    /** What made the backup: a sync, a recovery-point time, an express full, a check, or an admin. */
    origin: text('origin', {
      enum: ['manual', 'sync', 'recovery-point', 'express-full', 'consistency-check'],
    })
      .notNull()
      .default('manual'),
    /** `corrupt`: verify found blocks of it damaged or missing; never a base for an incremental. */
    status: text('status', { enum: ['ok', 'corrupt'] })
      .notNull()
      .default('ok'),
    verifiedAt: ts('verified_at'),
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
    /** A vault point: its restic snapshot id (server/vault). */
    snapshotId: text('snapshot_id'),
    /** A vault point: the disk point it was copied from (absent after disaster recovery). */
    sourceRpId: text('source_rp_id'),
    /** A vault point: the protection group it was made for, as tagged in the vault. */
    groupName: text('group_name'),
    /** Soft delete (vault retention): the point is gone from the catalog, its snapshot pruned later. */
    deletedAt: ts('deleted_at'),
  },
  (t) => [
    index('recovery_points_ds').on(t.datasourceId, t.createdAt),
    index('recovery_points_snapshot').on(t.snapshotId),
  ],
);

/**
 * The vault (tier 2, server/vault): a restic repository on a backend. The spec names where it is
 * and the files holding its secrets (passphrase, connection string, keys), never the secrets.
 */
export const vaults = pgTable('vaults', {
  id: text('id').primaryKey(),
  name: text('name').notNull().unique().default('default'),
  /** server/vault/backends/open-backend.ts BackendSpec (credential file paths only). */
  backend: jsonb('backend').$type<Record<string, unknown>>().notNull(),
  /** The file holding the vault passphrase, read whenever the vault is opened. */
  passphraseFile: text('passphrase_file').notNull(),
  /** The repository's config id. */
  repositoryId: text('repository_id').notNull(),
  createdAt: ts('created_at').notNull().defaultNow(),
});

/**
 * Mirror of the vault's pack files, rebuilt from its index on attach. `indexId` is the index
 * file naming the pack, null until one is written (an interrupted online backup).
 */
export const vaultPacks = pgTable('vault_packs', {
  id: text('id').primaryKey(),
  type: text('type', { enum: ['data', 'tree'] }).notNull(),
  size: bytes('size').notNull(),
  indexId: text('index_id'),
  /**
   * The pack's entries until an index file names it (cleared then): an index file must list
   * every blob of a pack, also those vault_blobs already maps to an earlier copy.
   */
  pendingEntries: jsonb('pending_entries').$type<unknown[]>(),
  createdAt: ts('created_at').notNull().defaultNow(),
});

/** Mirror of the vault index: where each blob is, for dedup and restores without loading the index. */
export const vaultBlobs = pgTable(
  'vault_blobs',
  {
    id: text('id').notNull(),
    type: text('type', { enum: ['data', 'tree'] }).notNull(),
    packId: text('pack_id').notNull(),
    offset: bytes('offset').notNull(),
    /** Stored (encrypted) length. */
    length: integer('length').notNull(),
    /** Plaintext length of a compressed blob; null when stored uncompressed. */
    uncompressedLength: integer('uncompressed_length'),
  },
  (t) => [primaryKey({ columns: [t.id, t.type] }), index('vault_blobs_pack').on(t.packId)],
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
    /**
     * Last time a backup stored or reused this block. Garbage collection never sweeps a block
     * touched after its cut-off (server/gc), which is what makes it safe beside running backups.
     */
    touchedAt: ts('touched_at').notNull().defaultNow(),
  },
  (t) => [index('chunks_pack').on(t.pack)],
);

/** Blocks verify found damaged or missing, taken out of the index so that the next backup re-sends them. */
export const quarantinedChunks = pgTable('quarantined_chunks', {
  id: text('id').primaryKey(),
  hash: text('hash').notNull(),
  pack: text('pack').notNull(),
  offset: bigint('offset', { mode: 'number' }).notNull(),
  storedSize: integer('stored_size').notNull(),
  reason: text('reason').notNull(),
  quarantinedAt: ts('quarantined_at').notNull().defaultNow(),
});

export const alertSeverities = ['critical', 'warning', 'info'] as const;

/**
 * Alerts: one active row per (kind, subject) while the condition holds; resolved, not deleted,
 * when it clears.
 */
export const alerts = pgTable(
  'alerts',
  {
    id: text('id').primaryKey(),
    kind: text('kind').notNull(),
    severity: text('severity', { enum: alertSeverities }).notNull(),
    /** What the alert is about, e.g. `datasource:<id>`, `agent:<id>`, `store`. */
    subject: text('subject').notNull(),
    message: text('message').notNull(),
    state: text('state', { enum: ['active', 'resolved'] })
      .notNull()
      .default('active'),
    raisedAt: ts('raised_at').notNull().defaultNow(),
    updatedAt: ts('updated_at').notNull().defaultNow(),
    resolvedAt: ts('resolved_at'),
  },
  (t) => [
    uniqueIndex('alerts_one_active').on(t.kind, t.subject).where(sql`state = 'active'`),
    index('alerts_state').on(t.state, t.raisedAt),
  ],
);

/**
 * The scheduler's memory: the last slot of each schedule of a datasource (or group) that was
 * turned into a job, so that a restart neither repeats a slot nor runs every missed one.
 */
export const scheduleMarks = pgTable('schedule_marks', {
  /** e.g. `ds:<id>:backup`, `ds:<id>:express-full`, `ds:<id>:consistency`. */
  key: text('key').primaryKey(),
  lastSlotAt: ts('last_slot_at').notNull(),
});

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
