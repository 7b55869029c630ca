import { randomBytes } from 'node:crypto';
import type { VaultBackend } from '../backends/backend.ts';
import type { MasterKey } from './crypto.ts';
import { VaultFormatError } from './errors.ts';
import { isId } from './id.ts';
import { formatPolynomial, isIrreducible, parsePolynomial, randomPolynomial } from './polynomial.ts';
import { decodeJsonFile, encodeJsonFile } from './unpacked.ts';

/**
 * The repository's `config` file (doc/design.rst, "Repository Format"): encrypted JSON
 * {version, id, chunker_polynomial}, stored under the fixed name `config`. Version 2 is the
 * format with compression; version 1 repositories are readable too (no compressed blobs).
 */

export interface RepositoryConfig {
  version: 1 | 2;
  /** 32 random bytes, hex: identifies the repository wherever it is stored. */
  id: string;
  chunker_polynomial: string;
}

export function newConfig(): RepositoryConfig {
  return {
    version: 2,
    id: randomBytes(32).toString('hex'),
    chunker_polynomial: formatPolynomial(randomPolynomial()),
  };
}

export async function saveConfig(
  backend: VaultBackend,
  key: MasterKey,
  config: RepositoryConfig,
): Promise<void> {
  await backend.save('config', encodeJsonFile(key, config).bytes);
}

/** Loads and checks the config, as restic's LoadConfig does (version, irreducible polynomial). */
export async function loadConfig(backend: VaultBackend, key: MasterKey): Promise<RepositoryConfig> {
  const value = decodeJsonFile(key, await backend.load('config'), 'config') as Partial<RepositoryConfig>;
  if (value.version !== 1 && value.version !== 2) {
    throw new VaultFormatError(
      `config: unsupported repository version ${JSON.stringify(value.version)} (want 1 or 2)`,
    );
  }
  if (!isId(value.id)) throw new VaultFormatError('config: id is not 64 hex characters');
  let pol: bigint;
  try {
    pol = parsePolynomial(String(value.chunker_polynomial));
  } catch (err) {
    throw new VaultFormatError('config: chunker_polynomial is not a hex number', { cause: err });
  }
  if (!isIrreducible(pol)) throw new VaultFormatError('config: invalid chunker polynomial (not irreducible)');
  return { version: value.version, id: value.id, chunker_polynomial: value.chunker_polynomial as string };
}
