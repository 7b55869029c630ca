import type { Logger } from 'pino';
import type WebSocket from 'ws';
import { ProtocolError } from '../../protocol/errors.ts';
import { decodeAgentFrame, encodeFrame, encodeFrameInto } from '../../protocol/frame.ts';
import type { AgentMessage, ServerMessageInput } from '../../protocol/messages.ts';

export type JobMessage = Exclude<AgentMessage, { t: 'hello' }>;
export type JobHandler = (message: JobMessage) => Promise<void>;

/** The connection is gone (or failed while sending): an interruption, not the agent's fault. */
export class LinkDownError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LinkDownError';
  }
}

/**
 * One authenticated agent connection. Messages for a job are handed to that job's handler one
 * at a time, in arrival order; a protocol violation closes this connection only.
 */
export class AgentLink {
  readonly agentId: string;
  readonly agentName: string;
  readonly log: Logger;
  /** The protocol version agreed at the handshake. */
  readonly version: number;
  /** When this connection was accepted: an agent that reconnects gets a new one. */
  readonly connectedAt = new Date();
  private readonly ws: WebSocket;
  /** Jobs that ran on this connection and ended, most recent last (bounded). */
  private readonly ended = new Set<string>();
  private readonly handlers = new Map<string, { handle: JobHandler; queue: Promise<void> }>();
  private readonly closeListeners = new Set<(reason: string, violation: boolean) => void>();
  /** Closed because the agent broke the protocol (as opposed to the link dropping). */
  private violation = false;
  private closedReason: string | undefined;

  constructor(ws: WebSocket, agent: { id: string; name: string }, version: number, log: Logger) {
    this.ws = ws;
    this.version = version;
    this.agentId = agent.id;
    this.agentName = agent.name;
    this.log = log;
    ws.on('message', (data, isBinary) => this.onFrame(data, isBinary));
    ws.on('close', (code, reason) =>
      this.onClosed(`connection closed (${code}${reason.length ? ` ${reason}` : ''})`),
    );
  }

  get open(): boolean {
    return this.closedReason === undefined;
  }

  /**
   * Resolves once the frame is handed to the socket; the socket's own buffer is bounded by callers'
   * windows. `reuse`: a buffer to encode the frame into, which the caller may overwrite once this
   * resolves (see encodeFrameInto).
   */
  send(message: ServerMessageInput, reuse?: Buffer): Promise<void> {
    if (!this.open) return Promise.reject(new LinkDownError(`agent "${this.agentName}" is not connected`));
    const frame = reuse ? encodeFrameInto(message, reuse) : encodeFrame(message);
    return new Promise((resolve, reject) => {
      this.ws.send(frame, { binary: true }, (err) =>
        err
          ? reject(new LinkDownError(`link to agent "${this.agentName}" failed: ${err.message}`))
          : resolve(),
      );
    });
  }

  /** Routes every message carrying `jobId` to `handle` until `release` is called. */
  attach(jobId: string, handle: JobHandler): () => void {
    this.handlers.set(jobId, { handle, queue: Promise.resolve() });
    this.ended.delete(jobId);
    return () => {
      this.handlers.delete(jobId);
      this.ended.add(jobId);
      if (this.ended.size > 256) this.ended.delete(this.ended.values().next().value!);
    };
  }

  /** `violation` tells a protocol refusal (the agent misbehaved) from a dropped link. */
  onClose(listener: (reason: string, violation: boolean) => void): () => void {
    if (!this.open) {
      listener(this.closedReason!, this.violation);
      return () => {};
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  /** Refuse the peer: an `error` frame with the reason, then a close carrying the code. */
  /** `violation: false` for closes that are not the agent's fault (a newer connection replaced it). */
  fail(err: ProtocolError, violation = true): void {
    if (!this.open) return;
    this.log.warn({ code: err.code, err: err.message }, 'closing agent connection');
    try {
      this.ws.send(encodeFrame({ t: 'error', code: err.code, message: err.message }));
    } catch {
      // The socket may already be gone; the close below still applies.
    }
    this.ws.close(err.closeCode, err.code);
    this.violation = violation;
    this.onClosed(`${err.code}: ${err.message}`);
  }

  terminate(reason: string): void {
    this.ws.terminate();
    this.onClosed(reason);
  }

  private onFrame(data: WebSocket.RawData, isBinary: boolean): void {
    if (!this.open) return;
    let message: AgentMessage;
    try {
      if (!isBinary) throw new ProtocolError('PROTO_ERR_MALFORMED', 'frames must be binary');
      message = decodeAgentFrame(data);
    } catch (err) {
      this.fail(err as ProtocolError);
      return;
    }
    if (message.t === 'hello') {
      this.fail(new ProtocolError('PROTO_ERR_UNEXPECTED', 'hello was already received on this connection'));
      return;
    }
    const entry = this.handlers.get(message.jobId);
    // Frames already on the wire when a job ended here (a progress report, an abort race)
    // are dropped; a frame for a job this connection never ran is a protocol violation.
    if (!entry && this.ended.has(message.jobId)) return;
    if (!entry) {
      this.fail(
        new ProtocolError(
          'PROTO_ERR_UNEXPECTED',
          `"${message.t}" for job ${message.jobId}, which is not running here`,
        ),
      );
      return;
    }
    entry.queue = entry.queue.then(() =>
      entry.handle(message).catch((err: unknown) => {
        if (err instanceof ProtocolError) this.fail(err);
        else this.log.error({ err, jobId: message.jobId }, 'job handler failed');
      }),
    );
  }

  private onClosed(reason: string): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = reason;
    for (const listener of this.closeListeners) listener(reason, this.violation);
    this.closeListeners.clear();
  }
}
