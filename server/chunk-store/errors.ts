/** A chunk store failure. Its own module, so that worker threads reading blocks load nothing else. */
export class ChunkStoreError extends Error {
  constructor(
    readonly code: 'CHUNK_MISSING' | 'CHUNK_CORRUPT' | 'STORE_IO',
    message: string,
  ) {
    super(message);
    this.name = 'ChunkStoreError';
  }
}
