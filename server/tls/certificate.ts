import { mkdir, readFile } from 'node:fs/promises';
import os from 'node:os';
import selfsigned from 'selfsigned';
import { fingerprintOfPem } from '../../protocol/tls-pin.ts';
import { writeFileAtomic } from '../../lib/durable-fs.ts';

export interface ServerCertificate {
  cert: string;
  key: string;
  /** SHA-256 of the certificate (lowercase hex); agents and the CLI pin it. */
  fingerprint: string;
}

/**
 * The server's TLS identity: an admin-provided certificate, or a self-signed one generated on
 * first start and kept in the data folder (as Proxmox Backup Server does). It is valid for
 * ten years because agents pin it: rotating it means re-pinning every agent.
 */
export async function loadOrCreateCertificate(opts: {
  certPath: string;
  keyPath: string;
  tlsDir: string;
  provided?: { certFile: string; keyFile: string };
}): Promise<ServerCertificate> {
  if (opts.provided) {
    const cert = await readFile(opts.provided.certFile, 'utf8');
    const key = await readFile(opts.provided.keyFile, 'utf8');
    return { cert, key, fingerprint: fingerprintOfPem(cert) };
  }
  try {
    const cert = await readFile(opts.certPath, 'utf8');
    const key = await readFile(opts.keyPath, 'utf8');
    return { cert, key, fingerprint: fingerprintOfPem(cert) };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const host = os.hostname();
  const notBeforeDate = new Date(Date.now() - 60_000);
  const notAfterDate = new Date(notBeforeDate.getTime() + 10 * 365 * 24 * 3600 * 1000);
  const pems = await selfsigned.generate([{ name: 'commonName', value: `holdfast ${host}` }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate,
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', digitalSignature: true, keyCertSign: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: host },
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
          { type: 7, ip: '::1' },
        ],
      },
    ],
  });
  await mkdir(opts.tlsDir, { recursive: true, mode: 0o700 });
  // Key first: a certificate without its key would be unusable after a crash.
  await writeFileAtomic(opts.keyPath, pems.private, 0o600);
  await writeFileAtomic(opts.certPath, pems.cert, 0o644);
  return { cert: pems.cert, key: pems.private, fingerprint: fingerprintOfPem(pems.cert) };
}
