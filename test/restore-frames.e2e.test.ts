import { createHash, randomBytes } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlockDecoder } from '../protocol/block-codec.ts';
import type { Entry } from '../protocol/entry.ts';
import type { ServerMessage } from '../protocol/messages.ts';
import {
  enrollAgent,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
  waitForJob,
} from './harness.ts';
import { connectRaw, helloFor, type RawSocket, readCredential } from './raw-agent.ts';

/*
 * The restore stream on the wire, as a protocol-2 agent and a protocol-1 agent receive it: a
 * real agent backs up a tree of many small files and a few large ones; a raw agent (speaking the
 * version under test) is the restore target and checks the frames. Protocol 2 carries small
 * files' blocks inside their entries frame; protocol 1 gets a block frame per block. Both get
 * every file's blocks, in order, matching the hashes of the entries.
 */
describe('restore frames by protocol version', () => {
  let server: TestServer;
  let alpha: TestAgent;
  let work: string;
  let rpId: string;
  const contents = new Map<string, Buffer>();

  beforeAll(async () => {
    server = await startServer();
    alpha = await startAgent(server, 'alpha');
    work = await tempDir('restore-frames');
    const src = path.join(work, 'src');
    for (let d = 0; d < 4; d++) {
      await mkdir(path.join(src, `d${d}`), { recursive: true });
      for (let f = 0; f < 60; f++) {
        const data = randomBytes(1000 + (((d * 60 + f) * 131) % 9000));
        contents.set(`d${d}/f${f}`, data);
        await writeFile(path.join(src, `d${d}`, `f${f}`), data);
      }
    }
    for (const name of ['large-1', 'large-2']) {
      const data = randomBytes(1536 * 1024);
      contents.set(name, data);
      await writeFile(path.join(src, name), data);
    }
    const ds = await server.api<{ id: string }>('POST', '/datasources', { agent: 'alpha', path: src });
    const job = await server.api<{ id: string }>('POST', '/backups', { datasourceId: ds.id });
    const done = await waitForJob(server, job.id, 60_000);
    expect(done.state, done.error ?? '').toBe('succeeded');
    rpId = done.rpId!;
  });

  afterAll(async () => {
    await alpha?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /**
   * Runs a restore onto a raw agent speaking `versions`: acknowledges every frame, rebuilds each
   * file from its blocks, and returns the frames received and the files.
   */
  async function restoreOnto(name: string, versions: number[]) {
    const stateDir = await enrollAgent(server, name);
    const sock: RawSocket = await connectRaw(server);
    try {
      await sock.send(helloFor(await readCredential(stateDir), { versions }));
      const welcome = await sock.next('welcome');
      const job = await server.api<{ id: string }>('POST', '/restores', {
        rpId,
        agent: name,
        target: path.join(work, `target-${name}`),
      });
      const start = await sock.next('restore.start');
      await sock.send({ t: 'restore.ready', jobId: start.jobId });
      const frames: ServerMessage[] = [];
      const files = new Map<string, Buffer[]>();
      const decoder = new BlockDecoder();
      let current: { path: string; left: number } | undefined;
      const take = (enc: number, data: Uint8Array) => {
        expect(current, 'a block belongs to a file').toBeDefined();
        files.get(current!.path)!.push(Buffer.from(decoder.decode(enc, data)));
        if (--current!.left === 0) current = undefined;
      };
      const begin = (e: Entry) => {
        expect(current, `${e.path} begins after the previous file's blocks`).toBeUndefined();
        if (e.type !== 'file') return;
        files.set(e.path, []);
        const left = e.hashes.filter((h) => h !== null).length;
        if (left > 0) current = { path: e.path, left };
      };
      for (;;) {
        const m = sock.received.shift() ?? (await nextFrame(sock));
        if (!('jobId' in m) || m.jobId !== start.jobId || m.t === 'restore.start') continue;
        frames.push(m);
        if (m.t === 'restore.end') break;
        if (m.t === 'restore.entries') {
          let next = 0;
          for (const e of m.entries) {
            begin(e);
            while (current && m.blocks && next < m.blocks.length)
              take(m.blocks[next]!.enc, m.blocks[next++]!.data);
          }
          expect(next).toBe(m.blocks?.length ?? 0);
        } else if (m.t === 'restore.block') {
          take(m.enc, m.data);
        }
        if ('seq' in m) await sock.send({ t: 'restore.ack', jobId: start.jobId, seq: m.seq });
      }
      let bytes = 0;
      for (const [p, data] of contents) {
        const got = Buffer.concat(files.get(p) ?? []);
        expect(sha(got), p).toBe(sha(data));
        bytes += data.length;
      }
      await sock.send({ t: 'restore.done', jobId: start.jobId, files: contents.size, bytes });
      const end = await waitForJob(server, job.id, 30_000);
      expect(end.state, end.error ?? '').toBe('succeeded');
      return { version: welcome.version, frames };
    } finally {
      sock.close();
      await rm(stateDir, { recursive: true, force: true });
    }
  }

  it('protocol 2: small files travel with their entries, a frame for many files', async () => {
    const { version, frames } = await restoreOnto('beta', [2, 1]);
    expect(version).toBe(2);
    const entries = frames.filter((f) => f.t === 'restore.entries');
    const withBlocks = entries.filter((f) => (f.blocks?.length ?? 0) > 0);
    const blocksInEntries = withBlocks.reduce((n, f) => n + f.blocks!.length, 0);
    // 240 small files of one block each, in a few frames; the two large files' blocks apart.
    expect(blocksInEntries).toBe(240);
    expect(withBlocks.length).toBeLessThanOrEqual(4);
    expect(frames.filter((f) => f.t === 'restore.block').length).toBeGreaterThanOrEqual(2 * 5);
    expect(frames.length).toBeLessThan(60);
  });

  it('protocol 1: every block in a frame of its own, after its entry', async () => {
    const { version, frames } = await restoreOnto('gamma', [1]);
    expect(version).toBe(1);
    expect(frames.some((f) => f.t === 'restore.entries' && f.blocks !== undefined)).toBe(false);
    expect(frames.filter((f) => f.t === 'restore.block').length).toBeGreaterThanOrEqual(240 + 2 * 5);
  });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Waits for the next frame of any type. */
async function nextFrame(sock: RawSocket): Promise<ServerMessage> {
  const before = sock.received.length;
  const deadline = Date.now() + 30_000;
  while (sock.received.length === before) {
    if (Date.now() > deadline) throw new Error('no frame from the server within 30 s');
    await new Promise((r) => setTimeout(r, 5));
  }
  return sock.received.shift()!;
}
