import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Packr } from 'msgpackr';
import WebSocket from 'ws';
import { decodeServerFrame } from '../protocol/frame.ts';
import type { AgentMessage, ServerMessage, ServerMessageOf } from '../protocol/messages.ts';
import { PROTOCOL_VERSIONS } from '../protocol/version.ts';
import type { TestServer } from './harness.ts';

/*
 * A hand-driven agent connection for protocol tests: speaks the wire format directly, so a
 * test can send exactly the frame it wants (including ones the real agent never would) and
 * observe the server's answers and how it closes the connection.
 */

/** Same MessagePack settings as protocol/frame.ts, without its size check (tests send oversized frames). */
const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, int64AsType: 'number' });

/** Encodes any value as a frame, valid message or not. */
export const pack = (value: unknown): Buffer => packr.pack(value);

export interface Closed {
  code: number;
  reason: string;
  /** The `error` frame received before the close, if the server sent one. */
  error: ServerMessageOf<'error'> | undefined;
}

export interface RawSocket {
  ws: WebSocket;
  /** Every server message received so far, in order. */
  received: ServerMessage[];
  /** Sends a message as a binary MessagePack frame (no schema or size check). */
  send(message: AgentMessage | Record<string, unknown>): Promise<void>;
  /** Sends bytes or text exactly as given. */
  sendRaw(data: Buffer | string): Promise<void>;
  /** The next not-yet-consumed message of type `t`; rejects if the connection closes first. */
  next<T extends ServerMessage['t']>(t: T, timeoutMs?: number): Promise<ServerMessageOf<T>>;
  /** Resolves once the connection is closed, with the close code and reason. */
  closed: Promise<Closed>;
  close(): void;
}

export interface AgentCredential {
  serverUrl: string;
  agentId: string;
  name: string;
  secret: string;
}

export async function readCredential(stateDir: string): Promise<AgentCredential> {
  return JSON.parse(await readFile(path.join(stateDir, 'agent.json'), 'utf8')) as AgentCredential;
}

/** Opens a WebSocket to the server's agent endpoint without saying anything yet. */
export async function connectRaw(server: TestServer): Promise<RawSocket> {
  const url = `${server.url.replace(/^http/, 'ws')}/agent/v1`;
  const options: WebSocket.ClientOptions = { perMessageDeflate: false };
  if (server.tls) {
    // Pinned as the agent does; ws types checkServerIdentity as boolean, Node's tls wants undefined for "ok".
    options.ca = server.tls.ca;
    options.checkServerIdentity = server.tls.checkServerIdentity as unknown as () => boolean;
  }
  const ws = new WebSocket(url, options);
  const received: ServerMessage[] = [];
  const inbox: ServerMessage[] = [];
  const waiters = new Set<() => void>();
  let closedInfo: Closed | undefined;
  const closed = new Promise<Closed>((resolve) => {
    ws.once('close', (code, reason) => {
      const error = received.find((m): m is ServerMessageOf<'error'> => m.t === 'error');
      closedInfo = { code, reason: reason.toString(), error };
      resolve(closedInfo);
      for (const wake of waiters) wake();
    });
  });
  // Writes racing the server's close may fail (EPIPE, ECONNRESET); the close event tells the story.
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    let message: ServerMessage;
    try {
      if (!isBinary) throw new Error('text frame');
      message = decodeServerFrame(data);
    } catch (err) {
      // The server must only ever send valid frames; tests see this as an unexpected message.
      message = { t: 'error', code: 'TEST_BAD_SERVER_FRAME', message: (err as Error).message };
    }
    received.push(message);
    inbox.push(message);
    for (const wake of waiters) wake();
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('close', (code) => reject(new Error(`agent endpoint closed during the upgrade (${code})`)));
    ws.once('unexpected-response', (_req, res) =>
      reject(new Error(`agent endpoint answered HTTP ${res.statusCode}`)),
    );
  });

  const sendRaw = (data: Buffer | string) =>
    new Promise<void>((resolve) => {
      // A send failing because the server already closed is not an error for these tests.
      ws.send(data, { binary: typeof data !== 'string' }, () => resolve());
    });

  const next = <T extends ServerMessage['t']>(t: T, timeoutMs = 10_000): Promise<ServerMessageOf<T>> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(`no "${t}" within ${timeoutMs} ms; received: ${received.map((m) => m.t).join(', ')}`),
        );
      }, timeoutMs);
      function check() {
        const i = inbox.findIndex((m) => m.t === t);
        if (i >= 0) {
          const [message] = inbox.splice(i, 1);
          clearTimeout(timer);
          waiters.delete(check);
          resolve(message as ServerMessageOf<T>);
        } else if (closedInfo) {
          clearTimeout(timer);
          waiters.delete(check);
          const why = closedInfo.error
            ? `${closedInfo.error.code}: ${closedInfo.error.message}`
            : closedInfo.reason;
          reject(new Error(`connection closed (${closedInfo.code} ${why}) while waiting for "${t}"`));
        }
      }
      waiters.add(check);
      check();
    });

  return {
    ws,
    received,
    send: (message) => sendRaw(pack(message)),
    sendRaw,
    next,
    closed,
    close: () => ws.terminate(),
  };
}

export function helloFor(
  cred: AgentCredential,
  overrides: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    t: 'hello',
    versions: [...PROTOCOL_VERSIONS],
    agentId: cred.agentId,
    secret: cred.secret,
    agentVersion: 'raw-test',
    hostname: 'raw-test-host',
    ...overrides,
  };
}

/** Connects as the agent enrolled in `stateDir`: hello, then waits for the welcome. */
export async function rawAgent(
  server: TestServer,
  stateDir: string,
): Promise<RawSocket & { cred: AgentCredential }> {
  const cred = await readCredential(stateDir);
  const sock = await connectRaw(server);
  await sock.send(helloFor(cred));
  await sock.next('welcome');
  return { ...sock, cred };
}
