import { createHash, X509Certificate } from 'node:crypto';
import tls from 'node:tls';

/*
 * Certificate pinning, shared by the agent and the admin CLI. The server's certificate is
 * usually self-signed, so instead of a CA the client pins its SHA-256 fingerprint: it first
 * fetches the certificate in a bare TLS handshake (no application data is sent), checks the
 * fingerprint, and from then on trusts exactly that certificate as its only CA. Secrets
 * (enrollment tokens, credentials, admin tokens) are therefore only ever sent to the pinned
 * server.
 */

/** "AB:CD:..." (as Node and openssl print it) or plain hex, any case -> lowercase hex. */
export function normalizeFingerprint(fp: string): string {
  const hex = fp
    .replace(/^sha256[:=]?/i, '')
    .replace(/:/g, '')
    .toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new Error(`not a SHA-256 fingerprint: ${fp}`);
  return hex;
}

/** Fingerprint in the colon-separated form shown to administrators. */
export function formatFingerprint(hex: string): string {
  return (normalizeFingerprint(hex).match(/../g) ?? []).join(':').toUpperCase();
}

export function fingerprintOfPem(pem: string): string {
  return createHash('sha256').update(new X509Certificate(pem).raw).digest('hex');
}

export interface PinnedTls {
  ca: string;
  checkServerIdentity: () => undefined;
}

/** TLS options that trust exactly one certificate, whatever host name it was reached under. */
export function pinnedTlsOptions(certPem: string): PinnedTls {
  // The name check is replaced by the pin: only the holder of that certificate's key passes.
  return { ca: certPem, checkServerIdentity: () => undefined };
}

/** Fetch the server's certificate over a bare handshake and check it against `fingerprint`. */
export async function fetchPinnedCertificate(
  serverUrl: string,
  fingerprint: string,
  timeoutMs = 10_000,
): Promise<string> {
  const want = normalizeFingerprint(fingerprint);
  const url = new URL(serverUrl);
  const port = Number(url.port || (url.protocol === 'https:' || url.protocol === 'wss:' ? 443 : 80));
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const raw = await new Promise<Buffer>((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      servername: isIp(host) ? undefined : host,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(
      () => socket.destroy(new Error(`TLS handshake with ${host}:${port} timed out`)),
      timeoutMs,
    );
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const cert = socket.getPeerCertificate();
      socket.end();
      if (!cert?.raw) reject(new Error(`${host}:${port} presented no certificate`));
      else resolve(cert.raw);
    });
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot reach ${host}:${port}: ${err.message}`));
    });
  });
  const got = createHash('sha256').update(raw).digest('hex');
  if (got !== want) {
    throw new Error(
      `server certificate fingerprint mismatch: expected ${formatFingerprint(want)}, got ${formatFingerprint(got)}; ` +
        'refusing to send credentials to this server',
    );
  }
  const b64 =
    raw
      .toString('base64')
      .match(/.{1,64}/g)
      ?.join('\n') ?? '';
  return `-----BEGIN CERTIFICATE-----\n${b64}\n-----END CERTIFICATE-----\n`;
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}
