import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { encodeBlock } from '../../protocol/block-codec.ts';
import type { Entry, FileEntry } from '../../protocol/entry.ts';
import { blockHash } from '../../protocol/hash.ts';
import type { AgentMessageInput, ServerMessage } from '../../protocol/messages.ts';
import { RestoreJob } from './restore-job.ts';

/*
 * The agent's side of a restore frame by frame (protocol/messages.ts): entries frames that carry
 * their small files' blocks (protocol 2) and block frames, acknowledgements, the end, and a
 * frame that breaks the rules.
 */

let target: string;
beforeEach(async () => {
  target = await mkdtemp(path.join(os.tmpdir(), 'holdfast-restore-job-'));
});
afterEach(async () => {
  await rm(target, { recursive: true, force: true });
});

const meta = {
  mode: 0o644,
  uid: process.getuid?.() ?? 0,
  gid: process.getgid?.() ?? 0,
  mtimeMs: 1_600_000_000_000,
};
const file = (p: string, blocks: Buffer[]): FileEntry => ({
  type: 'file',
  path: p,
  ...meta,
  size: blocks.reduce((n, b) => n + b.length, 0),
  hashes: blocks.map((b) => blockHash(b)),
});
const dir = (p: string): Entry => ({ type: 'dir', path: p, ...meta, mode: 0o755 });
const wire = (b: Buffer) => encodeBlock(b);

/**
 * Runs a restore job over the frames (with `pauseMs`, one at a time as a slow link would bring
 * them); resolves with what it sent once it ended.
 */
async function run(frames: ServerMessage[], pauseMs = 0): Promise<AgentMessageInput[]> {
  const sent: AgentMessageInput[] = [];
  let ended!: () => void;
  const end = new Promise<void>((resolve) => {
    ended = resolve;
  });
  const channel = {
    version: 2,
    send: async (m: AgentMessageInput) => {
      sent.push(m);
    },
  };
  const start = { t: 'restore.start', jobId: 'j1', target, kind: 'files', blockSize: 65536 } as const;
  const job = new RestoreJob(channel, start, pino({ level: 'silent' }), ended);
  job.run();
  for (const f of frames) {
    job.handle(f);
    if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
  }
  await end;
  // The last step's messages go out right after onEnd.
  await new Promise((r) => setTimeout(r, 20));
  return sent;
}

describe('RestoreJob', () => {
  it('writes small files from the blocks in their entries frame and large ones from block frames', async () => {
    const a = Buffer.from('alpha\n');
    const b = [randomBytes(70_000), randomBytes(3)];
    const big = [randomBytes(300_000), randomBytes(300_000)];
    const sent = await run(
      [
        {
          t: 'restore.entries',
          jobId: 'j1',
          seq: 1,
          entries: [dir('d'), file('d/a', [a]), file('d/b', b), file('big', big)],
          blocks: [wire(a), wire(b[0]!), wire(b[1]!)],
        },
        { t: 'restore.block', jobId: 'j1', seq: 2, ...wire(big[0]!) },
        { t: 'restore.block', jobId: 'j1', seq: 3, ...wire(big[1]!) },
        { t: 'restore.end', jobId: 'j1', seq: 4 },
      ] as ServerMessage[],
      50,
    );
    expect(await readFile(path.join(target, 'd/a'))).toEqual(a);
    expect((await readFile(path.join(target, 'd/b'))).equals(Buffer.concat(b))).toBe(true);
    expect((await readFile(path.join(target, 'big'))).equals(Buffer.concat(big))).toBe(true);
    const acks = sent.filter((m) => m.t === 'restore.ack').map((m) => (m as { seq: number }).seq);
    // Each frame arrived alone: acknowledged once written (restore.done stands for the end).
    expect(acks).toEqual([1, 2, 3]);
    expect(sent.at(-1)).toMatchObject({ t: 'restore.done', files: 3, bytes: 6 + 70_003 + 600_000 });
  });

  it('fails on blocks no file of the frame takes, and leaves no file behind', async () => {
    const a = Buffer.from('alpha\n');
    const sent = await run([
      {
        t: 'restore.entries',
        jobId: 'j1',
        seq: 1,
        entries: [file('a', [a])],
        blocks: [wire(a), wire(Buffer.from('stray'))],
      },
      { t: 'restore.end', jobId: 'j1', seq: 2 },
    ] as ServerMessage[]);
    expect(sent.at(-1)).toMatchObject({ t: 'restore.fail' });
    expect((sent.at(-1) as { message: string }).message).toMatch(/holds 1 blocks no file takes/);
    expect(sent.some((m) => m.t === 'restore.done')).toBe(false);
  });

  it('fails when an entries frame brings too few blocks and the next entry begins', async () => {
    const parts = [Buffer.from('one'), Buffer.from('two')];
    const sent = await run([
      {
        t: 'restore.entries',
        jobId: 'j1',
        seq: 1,
        entries: [file('f', parts), file('g', [Buffer.from('x')])],
        blocks: [wire(parts[0]!)],
      },
      { t: 'restore.end', jobId: 'j1', seq: 2 },
    ] as ServerMessage[]);
    expect(sent.at(-1)).toMatchObject({ t: 'restore.fail' });
    expect((sent.at(-1) as { message: string }).message).toMatch(/f: got entry g after 1 of 2 blocks/);
    expect(await readdir(target)).toEqual([]);
  });
});
