import type { Readable } from 'node:stream';
import { VaultBackendError } from './errors.ts';
import { TruncatedBodyError } from './retry.ts';

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

/**
 * The requested range out of a ranged GET's body. HTTP lets a server ignore Range (200 and the
 * whole object) and some S3-compatible servers widen it (s3rver answers `bytes=0-0` with
 * everything), so: cut the range out of what came, by the Content-Range start if there is
 * one. Undefined if the object is too short for the range.
 */
export function fitRange(
  body: Buffer,
  range: { offset: number; length: number },
  contentRange: string | undefined,
): Buffer | undefined {
  let start = 0;
  if (contentRange) {
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange.trim());
    if (!m) throw new Error(`unexpected Content-Range ${JSON.stringify(contentRange)}`);
    start = Number(m[1]);
  }
  if (start > range.offset) throw new Error(`server sent bytes from ${start}, not from ${range.offset}`);
  const got = body.subarray(range.offset - start, range.offset - start + range.length);
  return got.length === range.length ? got : undefined;
}

/**
 * A GET's body as the caller asked for it: the whole object, checked against the announced
 * length (a cut-off body is retried), or the requested range cut out of it (see fitRange).
 */
export function loadedPart(
  what: string,
  body: Buffer,
  contentLength: number | undefined,
  range: { offset: number; length: number } | undefined,
  contentRange: string | undefined,
): Buffer {
  const expected = contentLength ?? body.length;
  if (body.length !== expected) throw new TruncatedBodyError(body.length, expected);
  if (!range) return body;
  const part = fitRange(body, range, contentRange);
  if (!part)
    throw new VaultBackendError(
      `${what}: range ${fmtRange(range)} is past the end (got ${body.length} bytes)`,
    );
  return part;
}
