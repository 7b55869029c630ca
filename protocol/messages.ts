import { z } from 'zod';
import { bytes, entrySchema, hashSchema } from './entry.ts';
import { MAX_BLOCK_SIZE, MAX_ENTRIES_PER_BATCH, MAX_HASHES_PER_OFFER } from './version.ts';

/*
 * Every message on the agent link. One frame = one MessagePack map with a `t` field naming
 * the message. See docs/protocol.md for the conversation each belongs to.
 */

const id = z.string().min(1).max(100);
const blockData = bytes().refine((b) => b.length <= MAX_BLOCK_SIZE, {
  message: `block data is at most ${MAX_BLOCK_SIZE} bytes`,
});
const count = z.number().int().min(0);
/** How block bytes are encoded on the wire and in the chunk store: 0 = raw, 1 = one zstd frame. */
export const BlockEncoding = { raw: 0, zstd: 1 } as const;
export type BlockEncodingValue = (typeof BlockEncoding)[keyof typeof BlockEncoding];
const encoding = z.union([z.literal(0), z.literal(1)]).default(0);
const consistency = z.enum(['app-consistent', 'file-consistent', 'crash-consistent']);

// ---- agent -> server --------------------------------------------------------------------

export const agentMessageSchema = z.discriminatedUnion('t', [
  /** First frame of every connection. */
  z.object({
    t: z.literal('hello'),
    versions: z.array(z.number().int()).min(1).max(16),
    agentId: id,
    secret: z.string().min(1).max(200),
    agentVersion: z.string().max(50),
    hostname: z.string().max(255),
  }),
  /** Hashes of blocks just read; the server answers with `backup.need`. */
  z.object({
    t: z.literal('backup.offer'),
    jobId: id,
    seq: count,
    hashes: z.array(hashSchema).max(MAX_HASHES_PER_OFFER),
  }),
  /** One block the server asked for. */
  z.object({ t: z.literal('backup.block'), jobId: id, hash: hashSchema, enc: encoding, data: blockData }),
  /** Protocol 2: blocks the server asked for, several to a frame (in the order asked for). */
  z.object({
    t: z.literal('backup.blocks'),
    jobId: id,
    blocks: z
      .array(z.object({ hash: hashSchema, enc: encoding, data: blockData }))
      .min(1)
      .max(MAX_HASHES_PER_OFFER),
  }),
  /** Where the walk is, about once a second; bytesTotal is null until known. */
  z.object({
    t: z.literal('backup.progress'),
    jobId: id,
    bytesScanned: count,
    bytesDone: count,
    bytesTotal: count.nullable(),
  }),
  /** Manifest entries, in walk order, sent after all their blocks were offered. */
  z.object({
    t: z.literal('backup.entries'),
    jobId: id,
    entries: z.array(entrySchema).max(MAX_ENTRIES_PER_BATCH),
  }),
  /** The walk is complete and every needed block was sent. */
  z.object({
    t: z.literal('backup.end'),
    jobId: id,
    bytesScanned: count,
    warnings: z.array(z.string().max(4096)).max(10000),
    consistency: consistency.default('crash-consistent'),
  }),
  z.object({ t: z.literal('backup.fail'), jobId: id, message: z.string().max(4096) }),
  /** The agent is ready to receive a restore into its (validated) target. */
  z.object({ t: z.literal('restore.ready'), jobId: id }),
  /** Frames up to `seq` were written; frees the server's send window. */
  z.object({ t: z.literal('restore.ack'), jobId: id, seq: count }),
  z.object({ t: z.literal('restore.done'), jobId: id, files: count, bytes: count }),
  z.object({ t: z.literal('restore.fail'), jobId: id, message: z.string().max(4096) }),
]);

// ---- server -> agent --------------------------------------------------------------------

export const serverMessageSchema = z.discriminatedUnion('t', [
  z.object({ t: z.literal('welcome'), version: z.number().int(), agentId: id, name: z.string() }),
  z.object({ t: z.literal('error'), code: z.string(), message: z.string() }),
  z.object({
    t: z.literal('backup.start'),
    jobId: id,
    datasourceId: id,
    path: z.string().min(1).max(4096),
    kind: z.enum(['files', 'image']),
    blockSize: z.number().int().min(1).max(MAX_BLOCK_SIZE),
    /** The recovery point the agent's checksum cache must match to be trusted; null = read all. */
    baseRpId: id.nullable(),
    /** Compress blocks on the wire when that makes them smaller. */
    compress: z.boolean().default(true),
    /** Optional scripts run before and after the backup (application-consistent snapshots). */
    preScript: z.string().max(4096).nullable().default(null),
    postScript: z.string().max(4096).nullable().default(null),
    /** The same job again after the link dropped: blocks already acknowledged are not sent again. */
    resume: z.boolean().default(false),
  }),
  /** Agent settings pushed by the server at connect time and whenever they change. */
  z.object({ t: z.literal('agent.settings'), throttle: z.record(z.string(), z.unknown()).nullable() }),
  z.object({ t: z.literal('backup.need'), jobId: id, seq: count, hashes: z.array(hashSchema) }),
  /** Cumulative count of blocks durably stored for this job. */
  z.object({ t: z.literal('backup.ack'), jobId: id, stored: count }),
  z.object({ t: z.literal('backup.done'), jobId: id, rpId: id }),
  z.object({ t: z.literal('backup.abort'), jobId: id, message: z.string() }),
  z.object({
    t: z.literal('restore.start'),
    jobId: id,
    target: z.string().min(1).max(4096),
    /** files: target is a folder; image: target is the file or device to write. */
    kind: z.enum(['files', 'image']).default('files'),
    /** The recovery point's block size: where zero blocks (null hashes, never sent) go. */
    blockSize: z.number().int().min(1).max(MAX_BLOCK_SIZE),
  }),
  z.object({
    t: z.literal('restore.entries'),
    jobId: id,
    seq: count,
    entries: z.array(entrySchema),
    /**
     * Protocol 2: the blocks of these entries' files, in order (small files travel whole with
     * their entries: one frame for many files). Blocks not here follow as restore.block frames.
     */
    blocks: z.array(z.object({ enc: encoding, data: blockData })).optional(),
  }),
  /** The next block of the current file, in manifest order. */
  z.object({ t: z.literal('restore.block'), jobId: id, seq: count, enc: encoding, data: blockData }),
  z.object({ t: z.literal('restore.end'), jobId: id, seq: count }),
  z.object({ t: z.literal('restore.abort'), jobId: id, message: z.string() }),
]);

/** A message as decoded (defaults filled in). */
export type AgentMessage = z.output<typeof agentMessageSchema>;
export type ServerMessage = z.output<typeof serverMessageSchema>;
/** A message as sent (fields with defaults may be left out). */
export type AgentMessageInput = z.input<typeof agentMessageSchema>;
export type ServerMessageInput = z.input<typeof serverMessageSchema>;
export type AgentMessageOf<T extends AgentMessage['t']> = Extract<AgentMessage, { t: T }>;
export type ServerMessageOf<T extends ServerMessage['t']> = Extract<ServerMessage, { t: T }>;
