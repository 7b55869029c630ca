import http from 'node:http';
import type net from 'node:net';

/**
 * An HTTP proxy on a free loopback port in front of a storage emulator, that fails requests on
 * demand — a real server on a real socket, so the backends' SDKs see what a flaky network or
 * an overloaded service gives them:
 *
 * - `{ kind: 'status', status: 503 }`: reads the request, answers that status (XML error body);
 * - `{ kind: 'reset' }`: destroys the connection as soon as the request head arrives;
 * - `{ kind: 'cut-upload', afterBytes }`: forwards the request, but cuts both connections
 *   after `afterBytes` of its body, so the emulator sees a truncated upload.
 *
 * Requests are passed on unchanged (Host included, which S3 signatures cover).
 */
export type Fault =
  | { kind: 'status'; status: number }
  | { kind: 'reset' }
  | { kind: 'cut-upload'; afterBytes: number };

export interface FaultProxy {
  port: number;
  /** http://127.0.0.1:PORT */
  url: string;
  /** Requests received, failed ones included. */
  readonly requests: number;
  /** Requests failed on purpose. */
  readonly failed: number;
  /** Method and path of every request received, in order. */
  readonly log: readonly string[];
  /** Requests passed on to the emulator and answered, with their body size and status, in order. */
  readonly forwarded: readonly ForwardedRequest[];
  /** Fails the next `count` requests (Infinity: every one until heal()). */
  failNext(count: number, fault?: Fault): void;
  /**
   * Passes requests on until `count` requests matching `match` have been passed on, then fails
   * every request that arrives after those (requests already passed on finish) until heal().
   */
  failAfter(count: number, match: (method: string, url: string) => boolean, fault?: Fault): void;
  heal(): void;
  /** Resets the counters. */
  resetCounts(): void;
  close(): Promise<void>;
}

export interface ForwardedRequest {
  method: string;
  url: string;
  /** Request body bytes passed on. */
  bytes: number;
  status: number;
}

export async function startFaultProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<FaultProxy> {
  let pending = 0;
  let fault: Fault = { kind: 'status', status: 503 };
  let requests = 0;
  let failed = 0;
  const log: string[] = [];
  const forwarded: ForwardedRequest[] = [];
  let trip: { left: number; match: (method: string, url: string) => boolean; fault: Fault } | undefined;
  const sockets = new Set<net.Socket>();
  const upstreamAgent = new http.Agent({ keepAlive: true });

  const server = http.createServer((req, res) => {
    requests += 1;
    log.push(`${req.method} ${req.url}`);
    if (trip && trip.left <= 0) {
      pending = Number.POSITIVE_INFINITY;
      fault = trip.fault;
      trip = undefined;
    }
    const failing = pending > 0 ? fault : undefined;
    if (!failing && trip?.match(req.method ?? '', req.url ?? '')) trip.left -= 1;
    if (failing) {
      pending -= 1;
      failed += 1;
    }
    if (failing?.kind === 'reset') {
      req.socket.destroy();
      return;
    }
    if (failing?.kind === 'status') {
      req.resume();
      req.on('end', () => {
        const body =
          '<?xml version="1.0" encoding="utf-8"?><Error><Code>ServiceUnavailable</Code>' +
          '<Message>failure injected by the test proxy</Message></Error>';
        res.writeHead(failing.status, {
          'content-type': 'application/xml',
          'content-length': Buffer.byteLength(body),
          'x-ms-error-code': 'ServerBusy',
        });
        res.end(req.method === 'HEAD' ? undefined : body);
      });
      return;
    }
    let body = 0;
    const upstream = http.request(
      {
        host: targetHost,
        port: targetPort,
        method: req.method,
        path: req.url,
        headers: req.headers,
        agent: failing ? false : upstreamAgent,
      },
      (up) => {
        if (!failing) {
          forwarded.push({
            method: req.method ?? '',
            url: req.url ?? '',
            bytes: body,
            status: up.statusCode ?? 0,
          });
        }
        res.writeHead(up.statusCode ?? 502, up.statusMessage, up.rawHeaders);
        up.pipe(res);
        up.on('error', () => res.destroy());
      },
    );
    upstream.on('error', () => res.destroy());
    if (failing?.kind === 'cut-upload') {
      let seen = 0;
      req.on('data', (chunk: Buffer) => {
        if (seen >= failing.afterBytes) return;
        const room = failing.afterBytes - seen;
        seen += chunk.length;
        upstream.write(chunk.subarray(0, room));
        if (seen >= failing.afterBytes) {
          // Give the emulator the bytes so far, then drop both sides mid-body.
          setTimeout(() => {
            upstream.destroy();
            req.socket.destroy();
          }, 20);
        }
      });
      req.on('end', () => {
        // The whole body fit under afterBytes: cut anyway, before the answer.
        upstream.destroy();
        req.socket.destroy();
      });
      return;
    }
    req.on('data', (chunk: Buffer) => {
      body += chunk.length;
    });
    req.pipe(upstream);
    req.on('error', () => upstream.destroy());
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    get requests() {
      return requests;
    },
    get failed() {
      return failed;
    },
    get log() {
      return log;
    },
    get forwarded() {
      return forwarded;
    },
    failNext(count, f = { kind: 'status', status: 503 }) {
      pending = count;
      fault = f;
    },
    failAfter(count, match, f = { kind: 'status', status: 503 }) {
      trip = { left: count, match, fault: f };
    },
    heal() {
      pending = 0;
      trip = undefined;
    },
    resetCounts() {
      requests = 0;
      failed = 0;
      log.length = 0;
      forwarded.length = 0;
    },
    async close() {
      for (const s of sockets) s.destroy();
      upstreamAgent.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
