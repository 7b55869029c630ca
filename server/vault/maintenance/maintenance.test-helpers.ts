import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { expect } from 'vitest';
import type { VaultBackend, VaultFolder } from '../backends/backend.ts';
import { resticOk } from '../format/restic-cli.test-helpers.ts';

/**
 * A real backend that "crashes" at its N-th write or delete: that call and every later one
 * throw, as if the process had died there. The files already written stay, exactly as a crash
 * would leave them. Reads keep working (the next process reads what is there).
 */
export class CrashingBackend implements VaultBackend {
  mutations = 0;
  crashed = false;
  readonly name: string;

  constructor(
    private readonly inner: VaultBackend,
    /** Crash at this mutation (1-based); Infinity never crashes (to count them). */
    private readonly crashAt: number,
  ) {
    this.name = `crashing:${inner.name}`;
  }

  private step(): void {
    if (this.crashed) throw new Error('simulated crash (process is gone)');
    this.mutations++;
    if (this.mutations >= this.crashAt) {
      this.crashed = true;
      throw new Error(`simulated crash at mutation ${this.mutations}`);
    }
  }

  async save(p: string, data: Buffer): Promise<void> {
    this.step();
    await this.inner.save(p, data);
  }
  async remove(p: string): Promise<void> {
    this.step();
    await this.inner.remove(p);
  }
  load(p: string, range?: { offset: number; length: number }): Promise<Buffer> {
    return this.inner.load(p, range);
  }
  stat(p: string): Promise<{ size: number } | undefined> {
    return this.inner.stat(p);
  }
  list(prefix: VaultFolder): AsyncIterable<{ path: string; size: number }> {
    return this.inner.list(prefix);
  }
}

export const PASSPHRASE = 'correct horse battery staple 42';
export const MiB = 1024 * 1024;
export const rand = (n: number) => randomBytes(n);

/** `restic check --read-data` must say "no errors were found". Returns its output. */
export async function expectResticCheckOk(repoDir: string): Promise<string> {
  const out = await resticOk(repoDir, PASSPHRASE, ['check', '--read-data']);
  expect(out).toContain('no errors were found');
  return out;
}

/** restic restores snapshot `id` into `target`; each listed file must come back byte for byte. */
export async function expectResticRestore(
  repoDir: string,
  id: string,
  target: string,
  files: Record<string, Buffer>,
): Promise<void> {
  await resticOk(repoDir, PASSPHRASE, ['restore', id, '--target', target]);
  for (const [rel, content] of Object.entries(files)) {
    const got = await readFile(path.join(target, rel));
    expect(got.equals(content), `${rel} restored from ${id.slice(0, 8)}`).toBe(true);
  }
}
