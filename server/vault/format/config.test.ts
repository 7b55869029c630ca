import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LocalBackend } from '../backends/local-backend.ts';
import { loadConfig, newConfig, saveConfig } from './config.ts';
import { newMasterKey } from './crypto.ts';
import { degree, formatPolynomial, isIrreducible, parsePolynomial, randomPolynomial } from './polynomial.ts';
import { tempDir } from './restic-cli.test-helpers.ts';
import { encodeJsonFile } from './unpacked.ts';

describe('chunker polynomial', () => {
  it("agrees with known cases, restic's test polynomial among them", () => {
    expect(isIrreducible(0x3da3358b4dc173n)).toBe(true); // restic's test polynomial
    expect(isIrreducible(0x25b468838dcb75n)).toBe(true); // the example in restic's design document
    expect(isIrreducible(0b111n)).toBe(true); // x^2+x+1
    expect(isIrreducible(0b1011n)).toBe(true); // x^3+x+1
    expect(isIrreducible(0b101n)).toBe(false); // x^2+1 = (x+1)^2
    expect(isIrreducible(0b10101n)).toBe(false); // x^4+x^2+1 = (x^2+x+1)^2
    expect(isIrreducible(0x3da3358b4dc173n * 2n)).toBe(false); // divisible by x
  });

  it('picks random irreducible polynomials of degree 53 in restic hex form', () => {
    const p = randomPolynomial();
    expect(degree(p)).toBe(53);
    expect(isIrreducible(p)).toBe(true);
    expect(parsePolynomial(formatPolynomial(p))).toBe(p);
    expect(formatPolynomial(p)).toMatch(/^[0-9a-f]{14}$/);
  });
});

describe('config', () => {
  const key = newMasterKey();
  let dir: { dir: string; cleanup: () => Promise<void> };
  beforeEach(async () => {
    dir = await tempDir('holdfast-config-');
  });
  afterEach(async () => {
    await dir.cleanup();
  });

  it('round-trips a new version-2 config', async () => {
    const backend = new LocalBackend(dir.dir);
    const config = newConfig();
    expect(config.version).toBe(2);
    expect(config.id).toMatch(/^[0-9a-f]{64}$/);
    await saveConfig(backend, key, config);
    expect(await loadConfig(backend, key)).toEqual(config);
  });

  it('refuses unknown versions and polynomials restic would refuse', async () => {
    const backend = new LocalBackend(dir.dir);
    const save = (v: unknown) => backend.save('config', encodeJsonFile(key, v).bytes);
    await save({ ...newConfig(), version: 3 });
    await expect(loadConfig(backend, key)).rejects.toThrow(/unsupported repository version 3/);
    await save({ ...newConfig(), chunker_polynomial: '15' });
    await expect(loadConfig(backend, key)).rejects.toThrow(/invalid chunker polynomial/);
  });
});
