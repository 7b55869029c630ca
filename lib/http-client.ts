import http from 'node:http';
import https from 'node:https';
import type { PinnedTls } from '../protocol/tls-pin.ts';

export class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

/**
 * JSON over HTTP(S) for the CLI and the agent. With `tls` the server's certificate is pinned;
 * without it, https URLs are checked against the system's CAs.
 */
export async function requestJson<T>(
  url: string,
  opts: { method?: string; body?: unknown; token?: string; tls?: PinnedTls; timeoutMs?: number } = {},
): Promise<T> {
  const u = new URL(url);
  const body = opts.body === undefined ? undefined : Buffer.from(JSON.stringify(opts.body));
  const headers: Record<string, string> = { accept: 'application/json' };
  if (body) headers['content-type'] = 'application/json';
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  const lib = u.protocol === 'https:' ? https : http;
  return new Promise<T>((resolve, reject) => {
    const req = lib.request(
      u,
      {
        method: opts.method ?? (body ? 'POST' : 'GET'),
        headers,
        ...(u.protocol === 'https:' ? opts.tls : {}),
      },
      (res) => {
        const parts: Buffer[] = [];
        res.on('data', (d: Buffer) => parts.push(d));
        res.on('end', () => {
          const text = Buffer.concat(parts).toString('utf8');
          let parsed: unknown;
          try {
            parsed = text ? JSON.parse(text) : undefined;
          } catch {
            reject(
              new HttpError(
                res.statusCode ?? 0,
                'BAD_RESPONSE',
                `server answered ${res.statusCode} with non-JSON`,
              ),
            );
            return;
          }
          if ((res.statusCode ?? 500) >= 400) {
            const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
            reject(
              new HttpError(
                res.statusCode ?? 0,
                e?.code ?? 'HTTP_ERROR',
                e?.message ?? `HTTP ${res.statusCode}`,
              ),
            );
          } else resolve(parsed as T);
        });
      },
    );
    req.setTimeout(opts.timeoutMs ?? 30_000, () =>
      req.destroy(new Error(`no answer from ${u.origin} in time`)),
    );
    req.on('error', (err) => reject(new Error(`cannot reach ${u.origin}: ${err.message}`)));
    req.end(body);
  });
}
