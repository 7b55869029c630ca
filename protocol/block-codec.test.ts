import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Compressor, compress } from 'zstd-napi';
import { BlockDecoder, BlockEncoder, encodeBlock } from './block-codec.ts';
import { ProtocolError } from './errors.ts';
import { BlockEncoding } from './messages.ts';
import { MAX_BLOCK_SIZE } from './version.ts';

/** One block decoded into a buffer of its own (a fresh decoder per call). */
const decodeBlock = (enc: number, data: Uint8Array, maxSize?: number) =>
  new BlockDecoder().decode(enc, data, maxSize);

const text = (n: number) =>
  Buffer.from('The quick brown fox jumps over the lazy dog. '.repeat(Math.ceil(n / 45)).slice(0, n));

function refusal(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ProtocolError);
    return err as ProtocolError;
  }
  throw new Error('expected a ProtocolError, nothing was thrown');
}

describe('encodeBlock', () => {
  it('keeps random data raw, as the very same buffer', () => {
    const raw = randomBytes(64 * 1024);
    const enc = encodeBlock(raw);
    expect(enc.enc).toBe(BlockEncoding.raw);
    expect(enc.data).toBe(raw);
  });

  it('compresses text with zstd, and decodeBlock gives the original back', () => {
    const raw = text(256 * 1024);
    const enc = encodeBlock(raw);
    expect(enc.enc).toBe(BlockEncoding.zstd);
    expect(enc.data.length).toBeLessThan(raw.length / 10);
    expect(decodeBlock(enc.enc, enc.data).equals(raw)).toBe(true);
  });

  it('round-trips raw blocks, including an empty one', () => {
    for (const raw of [randomBytes(1000), Buffer.alloc(0)]) {
      const enc = encodeBlock(raw);
      expect(decodeBlock(enc.enc, enc.data).equals(raw)).toBe(true);
    }
  });
});

describe('BlockEncoder', () => {
  it('encodes blocks back to back into one buffer as frames decodeBlock takes, and declines random data', () => {
    const encoder = new BlockEncoder();
    const blocks = [text(100_000), randomBytes(50_000), text(3000), Buffer.alloc(70_000, 7)];
    const out = Buffer.alloc(blocks.reduce((n, b) => n + BlockEncoder.bound(b.length), 0));
    let at = 0;
    const kept: { raw: Buffer; frame: Buffer }[] = [];
    for (const raw of blocks) {
      const n = encoder.encodeInto(out.subarray(at), raw);
      if (n === 0) continue;
      kept.push({ raw, frame: out.subarray(at, at + n) });
      at += n;
    }
    // The random block is not worth compressing; the others are, each one whole frame.
    expect(kept.map((k) => k.raw)).toEqual([blocks[0], blocks[2], blocks[3]]);
    for (const { raw, frame } of kept) {
      expect(frame.length).toBeLessThan(raw.length / 4);
      expect(decodeBlock(BlockEncoding.zstd, frame).equals(raw)).toBe(true);
    }
  });
});

describe('decodeBlock refuses', () => {
  it('a zstd block with trailing bytes after the frame', () => {
    const frame = compress(text(4096));
    const err = refusal(() => decodeBlock(BlockEncoding.zstd, Buffer.concat([frame, Buffer.from([0])])));
    expect(err.code).toBe('PROTO_ERR_MALFORMED');
    expect(err.message).toMatch(/trailing bytes/);
    // Two frames back to back are not one block either.
    const two = Buffer.concat([frame, frame]);
    expect(refusal(() => decodeBlock(BlockEncoding.zstd, two)).code).toBe('PROTO_ERR_MALFORMED');
  });

  it('a frame declaring more than the maximum block size, without inflating it', () => {
    const big = compress(Buffer.alloc(MAX_BLOCK_SIZE + 1)); // a few hundred bytes on the wire
    expect(big.length).toBeLessThan(1024);
    const err = refusal(() => decodeBlock(BlockEncoding.zstd, big));
    expect(err.code).toBe('PROTO_ERR_MALFORMED');
    expect(err.message).toMatch(/declare a size of at most/);
    // The limit is the caller's: a smaller one refuses smaller frames.
    const small = compress(text(2000));
    expect(refusal(() => decodeBlock(BlockEncoding.zstd, small, 1999)).code).toBe('PROTO_ERR_MALFORMED');
    expect(decodeBlock(BlockEncoding.zstd, small, 2000).equals(text(2000))).toBe(true);
  });

  it('a frame that does not declare its size', () => {
    const c = new Compressor();
    c.setParameters({ contentSizeFlag: false });
    const raw = text(4096);
    const frame = c.compress(raw);
    const err = refusal(() => decodeBlock(BlockEncoding.zstd, frame));
    expect(err.code).toBe('PROTO_ERR_MALFORMED');
    expect(err.message).toMatch(/declare a size/);
  });

  it('bytes that are not a zstd frame', () => {
    expect(refusal(() => decodeBlock(BlockEncoding.zstd, Buffer.from('not zstd at all'))).code).toBe(
      'PROTO_ERR_MALFORMED',
    );
    expect(refusal(() => decodeBlock(BlockEncoding.zstd, Buffer.alloc(0))).code).toBe('PROTO_ERR_MALFORMED');
  });

  it('an unknown encoding', () => {
    const err = refusal(() => decodeBlock(7, Buffer.from('x')));
    expect(err.code).toBe('PROTO_ERR_INVALID_MESSAGE');
    expect(err.message).toContain('unknown block encoding 7');
  });
});

describe('BlockDecoder', () => {
  it('decodes blocks one after another into its kept buffer, each right until the next call', () => {
    const d = new BlockDecoder();
    for (const n of [4096, 3 * 1024 * 1024, 10, 1024 * 1024 + 1, 0]) {
      const raw = text(n);
      expect(d.decode(BlockEncoding.zstd, compress(raw)).equals(raw), `zstd ${n}`).toBe(true);
      expect(d.decode(BlockEncoding.raw, raw).equals(raw), `raw ${n}`).toBe(true);
    }
  });

  it('refuses what decodeBlock refuses, and a frame holding less than it declares; then goes on', () => {
    const d = new BlockDecoder();
    const big = compress(Buffer.alloc(MAX_BLOCK_SIZE + 1));
    expect(refusal(() => d.decode(BlockEncoding.zstd, big)).message).toMatch(/declare a size of at most/);
    expect(refusal(() => d.decode(9, Buffer.from('x'))).code).toBe('PROTO_ERR_INVALID_MESSAGE');
    // A frame whose header declares 4,196 bytes for 4,096 of content (the 2-byte size field
    // of a single-segment frame holds the size minus 256).
    const frame = Buffer.from(compress(text(4096)));
    const fhd = frame[4]!;
    expect(fhd >> 6, 'a 2-byte content size field').toBe(1);
    expect((fhd >> 5) & 1, 'single segment').toBe(1);
    expect(frame.readUInt16LE(5) + 256).toBe(4096);
    frame.writeUInt16LE(4196 - 256, 5);
    expect(refusal(() => d.decode(BlockEncoding.zstd, frame)).code).toBe('PROTO_ERR_MALFORMED');
    expect(d.decode(BlockEncoding.zstd, compress(text(700))).equals(text(700))).toBe(true);
  });
});
