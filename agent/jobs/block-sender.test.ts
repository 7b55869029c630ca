import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { blockHash } from '../../protocol/hash.ts';
import type { AgentMessageInput } from '../../protocol/messages.ts';
import type { HashedBlock } from '../backup/block-pipeline.ts';
import { BlockSender } from './block-sender.ts';

/*
 * The agent's half of the block exchange, on a channel that records frames: offers, the blocks
 * the server asks for (several to a frame on protocol 2, one per frame on protocol 1), and the
 * blocks the server does not need given back at once.
 */

function blocks(sizes: number[]): { list: HashedBlock[]; recycled: Set<number> } {
  const recycled = new Set<number>();
  const list = sizes.map((n, i) => {
    const data = randomBytes(n);
    return {
      hash: blockHash(data),
      zero: false,
      enc: 0,
      data,
      size: n,
      recycle: () => recycled.add(i),
    } as HashedBlock;
  });
  return { list, recycled };
}

async function exchange(version: number, sizes: number[], needed: (i: number) => boolean) {
  const sent: AgentMessageInput[] = [];
  const channel = {
    version,
    send: async (m: AgentMessageInput) => {
      sent.push(m);
    },
  };
  const sender = new BlockSender(channel, 'job', new AbortController().signal);
  const { list, recycled } = blocks(sizes);
  for (const b of list) await sender.offer(b);
  await sender.flushOffer();
  const offers = sent.filter((m) => m.t === 'backup.offer') as Extract<
    AgentMessageInput,
    { t: 'backup.offer' }
  >[];
  let i = 0;
  for (const o of offers) {
    const need = o.hashes.filter(() => needed(i++));
    sender.onNeed(o.seq, need as Buffer[]);
  }
  await sender.drain();
  const frames = sent.filter((m) => m.t === 'backup.block' || m.t === 'backup.blocks');
  // The blocks in the frames, in the order sent, as hex hashes.
  const order = frames.flatMap((f) =>
    f.t === 'backup.blocks'
      ? f.blocks.map((b) => Buffer.from(b.hash).toString('hex'))
      : [Buffer.from((f as { hash: Uint8Array }).hash).toString('hex')],
  );
  const wanted = list.filter((_, j) => needed(j)).map((b) => b.hash.toString('hex'));
  return { frames, order, wanted, recycled, count: list.length };
}

describe('BlockSender', () => {
  const sizes = Array.from({ length: 600 }, (_, i) => 1000 + ((i * 977) % 20_000));

  it('protocol 2: the blocks asked for go several to a frame, in order, each frame about 256 KiB at most', async () => {
    const { frames, order, wanted, recycled, count } = await exchange(2, sizes, (i) => i % 3 !== 0);
    expect(order).toEqual(wanted);
    expect(frames.length).toBeLessThan(wanted.length / 10);
    expect(frames.filter((f) => f.t === 'backup.blocks').length).toBeGreaterThan(frames.length / 2);
    for (const f of frames) {
      if (f.t !== 'backup.blocks') continue; // a lone block goes as backup.block
      const bytes = f.blocks.reduce((n, b) => n + b.data.length, 0);
      expect(bytes).toBeLessThan(256 * 1024 + 21_000);
    }
    // Sent blocks and blocks not asked for are all given back.
    expect(recycled.size).toBe(count);
  });

  it('protocol 1: one block a frame', async () => {
    const { frames, order, wanted, recycled, count } = await exchange(1, sizes, (i) => i % 2 === 0);
    expect(order).toEqual(wanted);
    expect(frames.length).toBe(wanted.length);
    expect(frames.every((f) => f.t === 'backup.block')).toBe(true);
    expect(recycled.size).toBe(count);
  });
});
