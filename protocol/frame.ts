import { Packr } from 'msgpackr';
import type { z } from 'zod';
import { ProtocolError } from './errors.ts';
import {
  type AgentMessage,
  type AgentMessageInput,
  agentMessageSchema,
  type ServerMessage,
  type ServerMessageInput,
  serverMessageSchema,
} from './messages.ts';
import { MAX_FRAME_BYTES } from './version.ts';

// Plain maps, no records or structured clones: the wire format stays standard MessagePack so
// other implementations can speak it (golden bytes in frame.test.ts).
const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, int64AsType: 'number' });

export function encodeFrame(message: AgentMessageInput | ServerMessageInput): Buffer {
  return checkSize(packr.pack(message));
}

/**
 * encodeFrame, written into `buffer`: for a sender that reuses one buffer for its large frames,
 * each once the last is written (a fresh buffer per frame costs a page fault per 4 KiB written).
 * Returns a view of `buffer`, or a buffer of its own if the frame did not fit.
 */
export function encodeFrameInto(message: AgentMessageInput | ServerMessageInput, buffer: Buffer): Buffer {
  packr.useBuffer(buffer);
  try {
    return checkSize(packr.pack(message));
  } finally {
    // msgpackr writes every frame after the last one in a buffer it shares between them: the
    // frames that follow must not land in `buffer`, which its owner will overwrite.
    packr.useBuffer(Buffer.allocUnsafeSlow(8192));
  }
}

function checkSize(frame: Buffer): Buffer {
  if (frame.length > MAX_FRAME_BYTES) {
    throw new ProtocolError(
      'PROTO_ERR_FRAME_TOO_LARGE',
      `frame of ${frame.length} bytes exceeds ${MAX_FRAME_BYTES}`,
    );
  }
  return frame;
}

function decodeWith<T>(schema: z.ZodType<T, unknown>, data: unknown): T {
  if (!(data instanceof Uint8Array)) {
    throw new ProtocolError('PROTO_ERR_MALFORMED', 'frames must be binary');
  }
  // Size is checked before any decoding work is spent on the frame.
  if (data.length > MAX_FRAME_BYTES) {
    throw new ProtocolError(
      'PROTO_ERR_FRAME_TOO_LARGE',
      `frame of ${data.length} bytes exceeds ${MAX_FRAME_BYTES}`,
    );
  }
  let value: unknown;
  try {
    value = packr.unpack(data);
  } catch (err) {
    throw new ProtocolError('PROTO_ERR_MALFORMED', `not valid MessagePack: ${(err as Error).message}`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const t = typeof value === 'object' && value !== null && 't' in value ? String(value.t) : '?';
    const issue = parsed.error.issues[0];
    const where = issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid';
    throw new ProtocolError('PROTO_ERR_INVALID_MESSAGE', `invalid "${t}" message at ${where}`);
  }
  return parsed.data;
}

export function decodeAgentFrame(data: unknown): AgentMessage {
  return decodeWith(agentMessageSchema, data);
}

export function decodeServerFrame(data: unknown): ServerMessage {
  return decodeWith(serverMessageSchema, data);
}
