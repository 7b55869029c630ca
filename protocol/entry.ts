import { z } from 'zod';

/** MessagePack bin: msgpackr gives Buffers (any Uint8Array is accepted). */
export const bytes = () =>
  z.custom<Uint8Array>((v) => v instanceof Uint8Array, { message: 'expected binary data' });

/** A 32-byte SHA-256 digest, carried as MessagePack bin. */
export const hashSchema = bytes().refine((b) => b.length === 32, { message: 'a block hash is 32 bytes' });

/**
 * A manifest path: relative, '/'-separated, normalised. Rejecting '.', '..', empty segments and
 * NUL here means no later step (storage, restore) has to think about traversal again.
 */
export const entryPathSchema = z
  .string()
  .min(1)
  .max(4096)
  .refine(isSafeRelativePath, { message: 'path must be relative, without "." or ".." segments' });

export function isSafeRelativePath(p: string): boolean {
  if (p.length === 0 || p.startsWith('/') || p.includes('\0')) return false;
  return p.split('/').every((seg) => seg !== '' && seg !== '.' && seg !== '..');
}

const u32 = z.number().int().min(0).max(0xffffffff);

export const entrySchema = z.discriminatedUnion('type', [
  z.object({
    type: z.literal('file'),
    path: entryPathSchema,
    size: z.number().int().min(0),
    mode: u32,
    uid: u32,
    gid: u32,
    mtimeMs: z.number(),
    /** Block hashes in order; null stands for an all-zero block, which is neither sent nor stored. */
    hashes: z.array(hashSchema.nullable()),
  }),
  z.object({
    type: z.literal('dir'),
    path: entryPathSchema,
    mode: u32,
    uid: u32,
    gid: u32,
    mtimeMs: z.number(),
  }),
  z.object({
    type: z.literal('symlink'),
    path: entryPathSchema,
    mode: u32,
    uid: u32,
    gid: u32,
    mtimeMs: z.number(),
    target: z.string().min(1).max(4096),
  }),
]);

/** One item of a files recovery point. Files list their block hashes in order. */
export type Entry = z.infer<typeof entrySchema>;
export type FileEntry = Extract<Entry, { type: 'file' }>;
