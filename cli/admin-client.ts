import { readFile } from 'node:fs/promises';
import { requestJson } from '../lib/http-client.ts';
import { fetchPinnedCertificate, type PinnedTls, pinnedTlsOptions } from '../protocol/tls-pin.ts';
import { DEFAULT_SERVER_URL, dataPaths, resolveDataDir } from '../server/config.ts';

export interface AdminOptions {
  server?: string;
  fingerprint?: string;
  token?: string;
  data?: string;
}

/**
 * How the admin CLI reaches the API: URL from --server / HOLDFAST_SERVER; the certificate
 * pinned by --fingerprint / HOLDFAST_FINGERPRINT, or read from the data folder on the
 * server's own machine; the admin token from --token / HOLDFAST_TOKEN or DATA/admin-token.
 */
export class AdminClient {
  private constructor(
    readonly serverUrl: string,
    private readonly token: string,
    private readonly tls: PinnedTls | undefined,
  ) {}

  static async connect(opts: AdminOptions): Promise<AdminClient> {
    const serverUrl = (opts.server ?? process.env.HOLDFAST_SERVER ?? DEFAULT_SERVER_URL).replace(/\/+$/, '');
    const dataDir = resolveDataDir(opts.data);
    const paths = dataPaths(dataDir);
    const token = opts.token ?? process.env.HOLDFAST_TOKEN ?? (await readTokenFile(paths.adminToken));
    let tls: PinnedTls | undefined;
    if (serverUrl.startsWith('https:')) {
      const fingerprint = opts.fingerprint ?? process.env.HOLDFAST_FINGERPRINT;
      if (fingerprint) tls = pinnedTlsOptions(await fetchPinnedCertificate(serverUrl, fingerprint));
      else {
        const cert = await readFile(paths.cert, 'utf8').catch(() => undefined);
        if (cert) tls = pinnedTlsOptions(cert);
      }
    }
    return new AdminClient(serverUrl, token, tls);
  }

  get<T>(route: string): Promise<T> {
    return requestJson<T>(`${this.serverUrl}/api/v1${route}`, { token: this.token, tls: this.tls });
  }

  put<T>(route: string, body: unknown): Promise<T> {
    return requestJson<T>(`${this.serverUrl}/api/v1${route}`, {
      method: 'PUT',
      body,
      token: this.token,
      tls: this.tls,
    });
  }

  /** `timeoutMs`: for requests that do their work before answering (gc, verify); default 30 s. */
  post<T>(route: string, body: unknown = {}, opts: { timeoutMs?: number } = {}): Promise<T> {
    return requestJson<T>(`${this.serverUrl}/api/v1${route}`, {
      body,
      token: this.token,
      tls: this.tls,
      timeoutMs: opts.timeoutMs,
    });
  }

  patch<T>(route: string, body: unknown): Promise<T> {
    return requestJson<T>(`${this.serverUrl}/api/v1${route}`, {
      method: 'PATCH',
      body,
      token: this.token,
      tls: this.tls,
    });
  }

  delete<T>(route: string): Promise<T> {
    return requestJson<T>(`${this.serverUrl}/api/v1${route}`, {
      method: 'DELETE',
      token: this.token,
      tls: this.tls,
    });
  }
}

async function readTokenFile(file: string): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).trim();
  } catch {
    throw new Error(
      `no admin token: ${file} is not readable (pass --data DIR of the server, --token, or set HOLDFAST_TOKEN)`,
    );
  }
}
