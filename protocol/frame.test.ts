import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { ProtocolError, type ProtocolErrorCode } from './errors.ts';
import { decodeAgentFrame, decodeServerFrame, encodeFrame, encodeFrameInto } from './frame.ts';
import { MAX_FRAME_BYTES } from './version.ts';

const packr = new Packr({ useRecords: false });
const hash = Buffer.alloc(32, 7);
const file = (p: string) => ({
  type: 'file',
  path: p,
  size: 1,
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtimeMs: 1,
  hashes: [hash],
});
const entries = (p: string) => packr.pack({ t: 'backup.entries', jobId: 'j1', entries: [file(p)] });

function refusedWith(code: ProtocolErrorCode, data: unknown): ProtocolError {
  let caught: unknown;
  try {
    decodeAgentFrame(data);
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(ProtocolError);
  expect((caught as ProtocolError).code).toBe(code);
  return caught as ProtocolError;
}

describe('frame golden bytes', () => {
  // Standard MessagePack, written out: another implementation must produce and accept exactly this.
  const GOLDEN = 'de0003a174aa6261636b75702e61636ba56a6f624964a26a31a673746f72656403';

  it('encodes a message to the documented bytes', () => {
    expect(encodeFrame({ t: 'backup.ack', jobId: 'j1', stored: 3 }).toString('hex')).toBe(GOLDEN);
  });

  it('decodes the documented bytes to the message', () => {
    expect(decodeServerFrame(Buffer.from(GOLDEN, 'hex'))).toEqual({
      t: 'backup.ack',
      jobId: 'j1',
      stored: 3,
    });
  });

  it('round-trips an agent message with binary fields and fills defaults', () => {
    const data = Buffer.from('block bytes');
    const msg = decodeAgentFrame(encodeFrame({ t: 'backup.block', jobId: 'j1', hash, data }));
    expect(msg).toMatchObject({ t: 'backup.block', jobId: 'j1', enc: 0 });
    if (msg.t !== 'backup.block') throw new Error('wrong message');
    expect(Buffer.from(msg.hash).equals(hash)).toBe(true);
    expect(Buffer.from(msg.data).equals(data)).toBe(true);
  });
});

describe('decodeAgentFrame refuses', () => {
  it('a text frame', () => {
    const err = refusedWith('PROTO_ERR_MALFORMED', '{"t":"hello"}');
    expect(err.message).toMatch(/binary/);
    refusedWith('PROTO_ERR_MALFORMED', undefined);
    expect(err.closeCode).toBe(4002);
  });

  it('an oversized frame before decoding it', () => {
    // Valid MessagePack of a valid message, padded past the limit: the size alone refuses it.
    const ok = packr.pack({ t: 'restore.ready', jobId: 'j1' });
    const big = Buffer.alloc(MAX_FRAME_BYTES + 1);
    ok.copy(big);
    const err = refusedWith('PROTO_ERR_FRAME_TOO_LARGE', big);
    expect(err.closeCode).toBe(4001);
    // Not decoding means not even looking: garbage that large gets the same answer.
    refusedWith('PROTO_ERR_FRAME_TOO_LARGE', Buffer.alloc(MAX_FRAME_BYTES + 1, 0xc1));
    expect(decodeAgentFrame(ok)).toEqual({ t: 'restore.ready', jobId: 'j1' });
  });

  it('bytes that are not MessagePack', () => {
    refusedWith('PROTO_ERR_MALFORMED', Buffer.from('de0003a174', 'hex')); // truncated map
    refusedWith('PROTO_ERR_MALFORMED', Buffer.from('c4', 'hex')); // bin 8 without its length
    refusedWith('PROTO_ERR_MALFORMED', Buffer.alloc(0));
    // One complete value followed by more bytes is not one frame.
    const golden = encodeFrame({ t: 'restore.ready', jobId: 'j1' });
    refusedWith('PROTO_ERR_MALFORMED', Buffer.concat([golden, Buffer.from([0x01])]));
    // msgpackr decodes the reserved byte 0xc1 to a placeholder object instead of failing; the
    // schema still refuses it, only under the other code.
    refusedWith('PROTO_ERR_INVALID_MESSAGE', Buffer.from([0xc1]));
  });

  it('a message that does not match its schema', () => {
    const err = refusedWith(
      'PROTO_ERR_INVALID_MESSAGE',
      packr.pack({ t: 'restore.ack', jobId: 'j1', seq: -1 }),
    );
    expect(err.message).toContain('"restore.ack"');
    expect(err.message).toContain('seq');
    refusedWith('PROTO_ERR_INVALID_MESSAGE', packr.pack({ t: 'no.such.message' }));
    refusedWith('PROTO_ERR_INVALID_MESSAGE', packr.pack([1, 2, 3]));
    refusedWith(
      'PROTO_ERR_INVALID_MESSAGE',
      packr.pack({ t: 'backup.block', jobId: 'j1', hash: hash.subarray(1), data: hash }),
    );
    // A server message is not an agent message.
    refusedWith('PROTO_ERR_INVALID_MESSAGE', encodeFrame({ t: 'backup.ack', jobId: 'j1', stored: 3 }));
    expect(() => decodeServerFrame(packr.pack({ t: 'hello' }))).toThrow(ProtocolError);
  });

  it('entry paths that could escape or are not normal', () => {
    expect(decodeAgentFrame(entries('dir/file.txt'))).toMatchObject({ t: 'backup.entries' });
    for (const p of [
      '..',
      '../x',
      'a/../../x',
      'a/..',
      '/etc/passwd',
      '/',
      'a//b',
      'a/',
      '.',
      'a/./b',
      '',
      'a\0b',
    ]) {
      const err = refusedWith('PROTO_ERR_INVALID_MESSAGE', entries(p));
      expect(err.message, JSON.stringify(p)).toContain('entries.0.path');
    }
  });
});

describe('encodeFrame', () => {
  it('refuses to produce a frame above the limit', () => {
    const data = Buffer.alloc(MAX_FRAME_BYTES);
    let caught: unknown;
    try {
      encodeFrame({ t: 'backup.block', jobId: 'j1', hash, data });
    } catch (err) {
      caught = err;
    }
    expect((caught as ProtocolError).code).toBe('PROTO_ERR_FRAME_TOO_LARGE');
  });
});

describe('encodeFrameInto', () => {
  const message = (data: Buffer) => ({
    t: 'backup.block' as const,
    jobId: 'j1',
    hash,
    enc: 1 as const,
    data,
  });

  it('writes the same bytes as encodeFrame into the given buffer, and no later frame there', () => {
    const reused = Buffer.alloc(64 * 1024);
    const frame = encodeFrameInto(message(Buffer.alloc(1000, 3)), reused);
    expect(frame.buffer).toBe(reused.buffer);
    expect(frame.byteOffset).toBe(reused.byteOffset);
    expect(frame).toEqual(encodeFrame(message(Buffer.alloc(1000, 3))));

    const before = Buffer.from(reused);
    const other = encodeFrame({ t: 'backup.offer', jobId: 'j1', seq: 1, hashes: [hash] });
    expect(other.buffer).not.toBe(reused.buffer);
    expect(reused.equals(before)).toBe(true);
    expect(decodeAgentFrame(frame)).toMatchObject({ t: 'backup.block', data: Buffer.alloc(1000, 3) });
  });

  it('returns a buffer of its own when the frame does not fit', () => {
    const small = Buffer.alloc(4096);
    const frame = encodeFrameInto(message(Buffer.alloc(10_000, 5)), small);
    expect(frame.buffer).not.toBe(small.buffer);
    expect(frame).toEqual(encodeFrame(message(Buffer.alloc(10_000, 5))));
  });
});
