import type { Readable } from 'node:stream';

/** "offset+length" for messages. */
export function fmtRange(range: { offset: number; length: number } | undefined): string {
  return range ? `${range.offset}+${range.length}` : 'whole';
}

/** Reads a response body stream to its end. */
export async function readAll(stream: NodeJS.ReadableStream | Readable | undefined): Promise<Buffer> {
  if (!stream) return Buffer.alloc(0);
  const chunks: Buffer[] = [];
  for await (const chunk of stream as Readable) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}
