/**
 * Protocol versions this build speaks, newest first. The handshake picks the highest common one.
 * 2: restore.entries may carry the blocks of its files; backup.blocks sends several blocks a frame.
 */
export const PROTOCOL_VERSIONS = [2, 1] as const;

/** Largest frame either side accepts, checked before decoding: a 4 MiB block plus headers. */
export const MAX_FRAME_BYTES = 8 * 1024 * 1024;

/** Largest block size a datasource may use. */
export const MAX_BLOCK_SIZE = 4 * 1024 * 1024;
export const MIN_BLOCK_SIZE = 64 * 1024;
/**
 * A datasource's block size unless given. Images: fixed 1 MiB blocks. Files: content-defined
 * blocks around 256 KiB, small enough to find data copied or shifted inside large files (1 MiB
 * finds a quarter as much on the benchmark's), large enough to keep per-block costs low.
 */
export const DEFAULT_BLOCK_SIZE = { files: 256 * 1024, image: 1024 * 1024 } as const;

/** Manifest batches stay well below the frame limit. */
export const MAX_ENTRIES_PER_BATCH = 2000;
export const MAX_HASHES_PER_OFFER = 4096;
/** Entries are sent in batches of about this many encoded bytes (a frame holds at most MAX_FRAME_BYTES). */
export const ENTRY_BATCH_BYTES = 2 * 1024 * 1024;

/**
 * Block bytes an agent may have sent and not yet seen acknowledged. Agents keep well under it;
 * the server closes the link of one that goes over, so no agent can make it buffer without bound.
 */
export const MAX_UNACKED_BYTES = 64 * 1024 * 1024;

export function negotiateVersion(offered: readonly number[]): number | undefined {
  return PROTOCOL_VERSIONS.find((v) => offered.includes(v));
}
