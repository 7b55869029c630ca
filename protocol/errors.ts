/**
 * Coded protocol errors. Every refusal on the agent link carries one of these codes, both in
 * the `error` frame sent before closing and as the WebSocket close reason. The list is
 * documented in docs/protocol.md; keep the two in step.
 */
export const ProtocolErrors = {
  /** A frame larger than MAX_FRAME_BYTES. Checked before decoding. */
  PROTO_ERR_FRAME_TOO_LARGE: 4001,
  /** A frame that is not binary or not valid MessagePack. */
  PROTO_ERR_MALFORMED: 4002,
  /** A frame that decodes but does not match any message schema. */
  PROTO_ERR_INVALID_MESSAGE: 4003,
  /** A valid message that is not allowed in the current state (e.g. a block nobody asked for). */
  PROTO_ERR_UNEXPECTED: 4004,
  /** No protocol version in common. */
  PROTO_ERR_VERSION: 4005,
  /** Unknown agent or wrong credential. */
  PROTO_ERR_AUTH: 4006,
  /** The agent was revoked by an administrator. */
  PROTO_ERR_REVOKED: 4007,
  /** No `hello` within the handshake timeout. */
  PROTO_ERR_HANDSHAKE_TIMEOUT: 4008,
  /** A block whose content does not hash to the name it was sent under. Nothing is stored. */
  PROTO_ERR_HASH_MISMATCH: 4009,
  /** A manifest names a block this agent never uploaded and does not already own. */
  PROTO_ERR_UNKNOWN_BLOCK: 4010,
  /** The same agent connected again; the older connection is closed. */
  PROTO_ERR_REPLACED: 4011,
  /** The peer stopped answering heartbeats. */
  PROTO_ERR_TIMEOUT: 4012,
} as const;

export type ProtocolErrorCode = keyof typeof ProtocolErrors;

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, message: string) {
    super(message);
    this.name = 'ProtocolError';
    this.code = code;
  }

  /** WebSocket close code (4000-4999 is the range reserved for applications). */
  get closeCode(): number {
    return ProtocolErrors[this.code];
  }
}

export function codeForClose(closeCode: number): ProtocolErrorCode | undefined {
  for (const [name, value] of Object.entries(ProtocolErrors)) {
    if (value === closeCode) return name as ProtocolErrorCode;
  }
  return undefined;
}
