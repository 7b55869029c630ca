import os from 'node:os';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import { codeForClose, ProtocolError } from '../../protocol/errors.ts';
import { decodeServerFrame, encodeFrame, encodeFrameInto } from '../../protocol/frame.ts';
import type { AgentMessageInput, ServerMessage } from '../../protocol/messages.ts';
import { MAX_FRAME_BYTES, PROTOCOL_VERSIONS } from '../../protocol/version.ts';
import { pinnedTlsOptions } from '../../protocol/tls-pin.ts';
import type { AgentState } from '../state.ts';

export const AGENT_VERSION = '0.1.0';

export interface Channel {
  /** The protocol version agreed with the server on this connection. */
  readonly version: number;
  /**
   * Resolves once the frame is written to the socket. `reuse`: a buffer to encode the frame
   * into, which the caller may overwrite once this resolves (see encodeFrameInto).
   */
  send(message: AgentMessageInput, reuse?: Buffer): Promise<void>;
}

/** Refusals that retrying cannot fix: the agent stops and says why. */
const FATAL = new Set(['PROTO_ERR_AUTH', 'PROTO_ERR_REVOKED', 'PROTO_ERR_VERSION']);

export interface LinkOptions {
  /** Silence from the server after which the link is considered dead (server pings every 15 s). */
  deadAfterMs?: number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
}

/**
 * The agent's one connection to its server: dials out (NAT-friendly), authenticates, and
 * redials with jittered exponential backoff whenever the link drops.
 */
export class ServerLink {
  private ws: WebSocket | undefined;
  private stopped = false;
  private attempt = 0;
  private watchdog: NodeJS.Timeout | undefined;
  private stopResolve: ((err?: Error) => void) | undefined;
  private retryTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly state: AgentState,
    private readonly log: Logger,
    private readonly handlers: {
      onMessage(message: ServerMessage): void;
      onConnected(): void;
      onDisconnected(reason: string): void;
    },
    private readonly opts: LinkOptions = {},
  ) {}

  /** Runs until stop() (resolves) or a refusal retrying cannot fix (rejects with the reason). */
  run(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.stopResolve = (err) => (err ? reject(err) : resolve());
      this.dial();
    });
  }

  /** Counts connections: a job belongs to the connection it started on. */
  private epoch = 0;
  /** The protocol version of the current connection (its welcome says). */
  private version = 1;

  /**
   * A sender bound to the current connection. A job sends through its channel, so once the
   * link drops nothing a cancelled job still tries to send can reach a later connection
   * (where the same job id may already be running again, resumed).
   */
  channel(): Channel {
    const epoch = this.epoch;
    return {
      version: this.version,
      send: (message, reuse) =>
        epoch === this.epoch
          ? this.send(message, reuse)
          : Promise.reject(new Error('the connection this job ran on is gone')),
    };
  }

  get connected(): boolean {
    return this.ws?.readyState === WebSocket.OPEN;
  }

  send(message: AgentMessageInput, reuse?: Buffer): Promise<void> {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN)
      return Promise.reject(new Error('not connected to the server'));
    const frame = reuse ? encodeFrameInto(message, reuse) : encodeFrame(message);
    return new Promise((resolve, reject) =>
      ws.send(frame, { binary: true }, (err) => (err ? reject(err) : resolve())),
    );
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchdog);
    this.ws?.close(1000, 'agent stopping');
    this.ws?.terminate();
    this.stopResolve?.();
  }

  private dial(): void {
    if (this.stopped) return;
    const url = `${this.state.serverUrl.replace(/^http/, 'ws')}/agent/v1`;
    const tls = this.state.serverCert ? pinnedTlsOptions(this.state.serverCert) : {};
    const ws = new WebSocket(url, {
      ...tls,
      maxPayload: 2 * MAX_FRAME_BYTES,
      perMessageDeflate: false,
      handshakeTimeout: 15_000,
      // A zero masking key makes ws skip masking. Masking protects browsers from poisoning
      // caching proxies; it costs a pass over every byte, and the agent is no browser.
      generateMask: (mask: Buffer) => {
        mask.fill(0);
      },
    });
    this.ws = ws;
    let welcomed = false;
    let refusal: ProtocolError | undefined;

    ws.on('open', () => {
      this.send({
        t: 'hello',
        versions: [...PROTOCOL_VERSIONS],
        agentId: this.state.agentId,
        secret: this.state.secret,
        agentVersion: AGENT_VERSION,
        hostname: os.hostname(),
      }).catch(() => {});
      this.feedWatchdog(ws);
    });
    ws.on('ping', () => this.feedWatchdog(ws));
    ws.on('message', (data, isBinary) => {
      this.feedWatchdog(ws);
      let message: ServerMessage;
      try {
        if (!isBinary) throw new ProtocolError('PROTO_ERR_MALFORMED', 'frames must be binary');
        message = decodeServerFrame(data);
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'bad frame from server; reconnecting');
        ws.terminate();
        return;
      }
      if (message.t === 'error') {
        refusal = new ProtocolError(message.code as ProtocolError['code'], message.message);
        return;
      }
      if (message.t === 'welcome') {
        welcomed = true;
        this.epoch += 1;
        this.version = message.version;
        this.attempt = 0;
        this.log.info(
          { server: this.state.serverUrl, name: message.name, version: message.version },
          'connected to server',
        );
        this.handlers.onConnected();
        return;
      }
      this.handlers.onMessage(message);
    });
    ws.on('error', (err) => {
      if (!this.stopped) this.log.warn({ err: err.message }, 'connection error');
    });
    ws.on('close', (code, reasonBuf) => {
      clearTimeout(this.watchdog);
      const reason = refusal
        ? `${refusal.code}: ${refusal.message}`
        : `${code} ${reasonBuf.toString()}`.trim();
      if (welcomed) this.handlers.onDisconnected(reason);
      if (this.stopped) return;
      const code_ = refusal?.code ?? codeForClose(code);
      if (code_ && FATAL.has(code_)) {
        this.log.error({ reason }, 'server refused this agent');
        this.stopped = true;
        this.stopResolve?.(new Error(`server refused this agent: ${reason}`));
        return;
      }
      const delay = this.backoff();
      this.log.warn({ reason, retryInMs: delay }, 'disconnected from server');
      this.retryTimer = setTimeout(() => this.dial(), delay);
    });
  }

  private feedWatchdog(ws: WebSocket): void {
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      this.log.warn('server silent for too long; reconnecting');
      ws.terminate();
    }, this.opts.deadAfterMs ?? 45_000);
  }

  /** Exponential with full jitter, so a restarted server is not hit by every agent at once. */
  private backoff(): number {
    const min = this.opts.minBackoffMs ?? 500;
    const max = this.opts.maxBackoffMs ?? 30_000;
    const ceiling = Math.min(max, min * 2 ** this.attempt);
    this.attempt += 1;
    return Math.round(min / 2 + Math.random() * (ceiling - min / 2));
  }
}
