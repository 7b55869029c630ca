import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import { ProtocolError } from '../../protocol/errors.ts';
import { decodeAgentFrame, encodeFrame } from '../../protocol/frame.ts';
import { MAX_FRAME_BYTES, negotiateVersion, PROTOCOL_VERSIONS } from '../../protocol/version.ts';
import type { Db } from '../db/database.ts';
import { authenticateAgent, markSeen } from '../identity/agents.ts';
import { AgentLink } from './agent-link.ts';

export const AGENT_PATH = '/agent/v1';
const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * Accepts agent WebSocket connections on the API port, authenticates them, and keeps one
 * live link per agent. Each connection is isolated: whatever one agent sends, the worst it
 * can do is get its own connection closed.
 */
export class Gateway {
  private readonly wss: WebSocketServer;
  private readonly links = new Map<string, AgentLink>();
  private readonly heartbeat: NodeJS.Timeout;

  constructor(
    private readonly db: Db,
    private readonly log: Logger,
    private readonly onOnline: (link: AgentLink) => void,
    heartbeatMs = 15_000,
  ) {
    // ws rejects frames over maxPayload before buffering them (close 1009). Frames between
    // MAX_FRAME_BYTES and that bound reach our decoder, which answers with a coded reason.
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: 2 * MAX_FRAME_BYTES,
      perMessageDeflate: false,
    });
    this.heartbeat = setInterval(() => this.ping(), heartbeatMs);
    this.heartbeat.unref();
  }

  get(agentId: string): AgentLink | undefined {
    return this.links.get(agentId);
  }

  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, req.socket.remoteAddress ?? '?'));
  }

  private accept(ws: WebSocket, remote: string): void {
    const log = this.log.child({ remote });
    const refuse = (err: ProtocolError) => {
      log.warn({ code: err.code, err: err.message }, 'agent refused');
      // The socket may be paused (credential check): it must read the peer's close reply.
      ws.resume();
      ws.send(encodeFrame({ t: 'error', code: err.code, message: err.message }), () =>
        ws.close(err.closeCode, err.code),
      );
    };
    const timer = setTimeout(
      () =>
        refuse(
          new ProtocolError('PROTO_ERR_HANDSHAKE_TIMEOUT', `no hello within ${HANDSHAKE_TIMEOUT_MS} ms`),
        ),
      HANDSHAKE_TIMEOUT_MS,
    );
    ws.on('error', (err) => log.warn({ err: err.message }, 'agent socket error'));
    ws.once('close', () => clearTimeout(timer));
    ws.once('message', async (data, isBinary) => {
      clearTimeout(timer);
      try {
        if (!isBinary) throw new ProtocolError('PROTO_ERR_MALFORMED', 'frames must be binary');
        const hello = decodeAgentFrame(data);
        if (hello.t !== 'hello')
          throw new ProtocolError('PROTO_ERR_UNEXPECTED', `expected hello, got "${hello.t}"`);
        const version = negotiateVersion(hello.versions);
        if (version === undefined) {
          throw new ProtocolError(
            'PROTO_ERR_VERSION',
            `no common protocol version: agent speaks ${hello.versions.join(',')}, server ${PROTOCOL_VERSIONS.join(',')}`,
          );
        }
        // Frames arriving while the database answers are held by a paused socket.
        ws.pause();
        const agent = await authenticateAgent(this.db, hello.agentId, hello.secret);
        await markSeen(this.db, agent.id, { hostname: hello.hostname, agentVersion: hello.agentVersion });
        if (ws.readyState !== ws.OPEN) return;
        const link = new AgentLink(
          ws,
          agent,
          version,
          this.log.child({ agentId: agent.id, agent: agent.name }),
        );
        const previous = this.links.get(agent.id);
        if (previous)
          previous.fail(
            new ProtocolError('PROTO_ERR_REPLACED', 'the agent opened a newer connection'),
            false,
          );
        this.links.set(agent.id, link);
        link.onClose((reason) => {
          if (this.links.get(agent.id) === link) this.links.delete(agent.id);
          link.log.info({ reason }, 'agent disconnected');
        });
        await link.send({ t: 'welcome', version, agentId: agent.id, name: agent.name });
        await link.send({ t: 'agent.settings', throttle: agent.throttle ?? null });
        ws.resume();
        link.log.info({ version }, 'agent connected');
        this.onOnline(link);
      } catch (err) {
        if (err instanceof ProtocolError) refuse(err);
        else {
          log.error({ err }, 'handshake failed');
          ws.close(1011, 'internal error');
        }
      }
    });
  }

  private ping(): void {
    for (const ws of this.wss.clients) {
      const state = ws as WebSocket & { holdfastAlive?: boolean };
      if (state.holdfastAlive === false) {
        ws.terminate(); // no pong since the last ping: the link is dead
        continue;
      }
      state.holdfastAlive = false;
      ws.once('pong', () => {
        state.holdfastAlive = true;
      });
      ws.ping();
    }
  }

  /** Agents with a live connection to this server process. */
  connectedAgentIds(): string[] {
    return [...this.links.keys()];
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const ws of this.wss.clients) ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}
