import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { collectGarbage, collectYoungGarbage } from './collect-garbage.ts';

const MiB = 1024 * 1024;
const bufferBytes = () => process.memoryUsage().arrayBuffers;

/** Encrypts 1 MiB `count` times and drops the results, as a pack thread does blob after blob. */
function dropCiphertexts(count: number): void {
  const data = randomBytes(MiB);
  for (let i = 0; i < count; i++)
    createCipheriv('aes-256-ctr', randomBytes(32), randomBytes(16)).update(data);
}

describe('collectYoungGarbage', () => {
  it('frees buffers that died young, which V8 leaves piling up in a thread making few objects', async () => {
    collectGarbage();
    const before = bufferBytes();
    dropCiphertexts(20);
    const piled = bufferBytes() - before;
    collectYoungGarbage();
    // V8 frees the dead buffers' memory on a helper thread right after the collection.
    const deadline = Date.now() + 2000;
    while (bufferBytes() - before >= 2 * MiB && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    expect(piled, 'dead ciphertext before the collection').toBeGreaterThan(16 * MiB);
    expect(bufferBytes() - before, 'after it').toBeLessThan(2 * MiB);
  });
});
