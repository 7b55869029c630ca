import { Piscina } from 'piscina';
import { describe, expect, it } from 'vitest';
import { packBlocks } from '../../lib/packed-blocks.ts';
import { masterKeyToJson, newMasterKey } from './format/crypto.ts';
import { sha256Hex } from './format/id.ts';
import { decodeBlob, maxPackBytes } from './format/pack.ts';
import buildPackTask, { type PackTaskResult } from './pack-worker.ts';

const key = newMasterKey();
const trees = [
  Buffer.from('{"nodes":[]}\n'),
  Buffer.from(JSON.stringify({ nodes: Array(40).fill({ name: 'a' }) })),
];
const limits = { blobs: trees.length, inputBytes: trees[0]!.length + trees[1]!.length };

function task(slot: SharedArrayBuffer) {
  return {
    key: masterKeyToJson(key),
    slot,
    type: 'tree' as const,
    blocks: packBlocks(trees),
    ids: trees.map((t) => sha256Hex(t)),
  };
}

/** The result as the pool hands it over (a moved pack comes wrapped for transfer). */
function run(slot: SharedArrayBuffer): PackTaskResult {
  const r = buildPackTask(task(slot)) as PackTaskResult & { [k: symbol]: unknown };
  return (r[Piscina.valueSymbol] as PackTaskResult | undefined) ?? r;
}

function blobsOf(bytes: Buffer, entries: { id: string; offset: number; length: number }[]) {
  return entries.map((e) => decodeBlob(key, bytes.subarray(e.offset, e.offset + e.length), e));
}

describe('pack worker task', () => {
  it('builds the pack into the slot it is lent, and returns only its length and entries', () => {
    const slot = new SharedArrayBuffer(maxPackBytes(limits));
    const result = run(slot);
    expect(result.moved).toBeUndefined();
    const bytes = Buffer.from(slot, 0, result.length);
    expect(sha256Hex(bytes)).toBe(result.id);
    expect(blobsOf(bytes, result.entries)).toEqual(trees);
  });

  it('builds a pack too large for its slot in a buffer of its own and moves that back', () => {
    const slot = new SharedArrayBuffer(16);
    const result = run(slot);
    expect(result.moved).toBeInstanceOf(ArrayBuffer);
    const bytes = Buffer.from(result.moved!);
    expect(bytes.length).toBe(result.length);
    expect(sha256Hex(bytes)).toBe(result.id);
    expect(blobsOf(bytes, result.entries)).toEqual(trees);
    expect(new Uint8Array(slot).every((b) => b === 0)).toBe(true);
  });
});
