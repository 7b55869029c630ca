import { binScript, type EmulatorProcess, startEmulator } from './process.ts';

/** Azurite's well-known development account (public, documented by Microsoft; not a secret). */
export const AZURITE_ACCOUNT = 'devstoreaccount1';
export const AZURITE_KEY =
  'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface Azurite extends EmulatorProcess {
  /** Connection string for the blob service at `blobUrl` (default: this emulator). */
  connectionString(blobUrl?: string, accountKey?: string): string;
}

/**
 * Azurite's blob service (npm `azurite`) as a child process on a free loopback port, with its
 * data in a temp folder. Telemetry off: tests send nothing off this machine.
 */
export async function startAzurite(): Promise<Azurite> {
  const script = binScript('azurite-blob');
  const proc = await startEmulator({
    label: 'azurite',
    args: (port, dir) => [
      script,
      '--blobHost',
      '127.0.0.1',
      '--blobPort',
      String(port),
      '--location',
      dir,
      '--silent',
      '--skipApiVersionCheck',
      '--disableTelemetry',
    ],
  });
  return {
    ...proc,
    connectionString(blobUrl = proc.url, accountKey = AZURITE_KEY) {
      return (
        `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${accountKey};` +
        `BlobEndpoint=${blobUrl}/${AZURITE_ACCOUNT};`
      );
    },
  };
}
