import { randomUUID } from 'node:crypto';
import { readdir, readFile, stat, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { eq, inArray, sql } from 'drizzle-orm';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { locateChunks } from '../chunk-store/chunk-index.ts';
import { ChunkStore, ChunkStoreError } from '../chunk-store/chunk-store.ts';
import { touchOwnedChunks, touchStoredChunks } from '../chunk-store/chunk-touch.ts';
import { agentChunks, agents, chunks, jobs } from '../db/schema.ts';
import { collectGarbage } from './gc.ts';
import { block, type Fixture, hex, openFixture, textBlock } from './store-fixture.test-helpers.ts';

const HOUR = 60 * 60_000;
let f: Fixture;

beforeAll(async () => {
  f = await openFixture();
});
afterAll(async () => {
  await f?.close();
});
beforeEach(async () => {
  await f.reset();
});

const gc = (graceMs: number, dryRun = false) =>
  collectGarbage({ db: f.db, store: f.store, manifests: f.manifests, log: f.log }, { graceMs, dryRun });

async function hashesInIndex(): Promise<string[]> {
  return (await f.db.select({ hash: chunks.hash }).from(chunks)).map((r) => r.hash).sort();
}

async function ownedHashes(): Promise<string[]> {
  return (await f.db.select({ hash: agentChunks.hash }).from(agentChunks)).map((r) => r.hash).sort();
}

async function packFiles(): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir(f.store.packsDir))
    out.push(...(await readdir(path.join(f.store.packsDir, d))));
  return out.map((n) => n.replace('.pack', '')).sort();
}

async function job(state: 'running' | 'queued', startedAgoMs: number, interrupted = false): Promise<string> {
  const id = randomUUID();
  await f.db.insert(jobs).values({
    id,
    type: 'backup',
    state,
    agentId: f.agentId,
    startedAt: sql`now() - make_interval(secs => ${startedAgoMs / 1000})`,
    interruptedAt: interrupted ? sql`now()` : null,
  });
  return id;
}

describe('garbage collection: sweep', () => {
  it('frees exactly the unreferenced blocks touched before the cut-off, with their ownership, and reports bytes', async () => {
    const ds = await f.datasource();
    const blocks = Array.from({ length: 8 }, (_, i) => (i % 2 ? block(30_000 + i) : textBlock(`b${i}`)));
    const locs = await f.storeBlocks(blocks);
    const h = blocks.map(hex);
    await f.recoveryPoint(ds, [h[0]!, h[1]!]);
    await f.recoveryPoint(ds, [h[1]!, h[5]!, h[6]!]);
    // 2, 3 and 4 are unreferenced and old; 7 is unreferenced but touched within the grace.
    await f.age(h.slice(0, 7), 2 * HOUR);
    await f.agePacks(2 * HOUR);
    const garbage = [h[2]!, h[3]!, h[4]!];
    const garbageBytes = locs.filter((l) => garbage.includes(l.hash)).reduce((n, l) => n + l.storedSize, 0);

    const dry = await gc(HOUR, true);
    expect(dry).toMatchObject({
      dryRun: true,
      chunksFreed: 3,
      bytesFreed: garbageBytes,
      recoveryPointsMarked: 2,
      referencedBlocks: 4,
    });
    expect(await hashesInIndex()).toEqual([...h].sort());

    const report = await gc(HOUR);
    expect(report).toMatchObject({
      dryRun: false,
      graceMs: HOUR,
      chunksFreed: 3,
      bytesFreed: garbageBytes,
      packsDeleted: 0,
      packsRewritten: 0,
      orphanManifestsRemoved: 0,
    });
    expect(Date.parse(report.startedAt) - Date.parse(report.cutoff)).toBe(HOUR);
    const kept = h.filter((x) => !garbage.includes(x)).sort();
    expect(await hashesInIndex()).toEqual(kept);
    // An ownership row never outlives its block.
    expect(await ownedHashes()).toEqual(kept);
    // Everything kept still reads back.
    const index = await locateChunks(f.db, kept);
    for (const [i, b] of blocks.entries()) {
      if (!kept.includes(h[i]!)) continue;
      expect((await f.store.readVerified(index.get(h[i]!)!)).equals(b)).toBe(true);
    }
    // Nothing left to do the second time.
    expect(await gc(HOUR)).toMatchObject({ chunksFreed: 0, bytesFreed: 0 });
  });

  it('keeps blocks a running or interrupted backup may count on, then frees them once it is over', async () => {
    const blocks = [block(), block(), block()];
    await f.storeBlocks(blocks);
    const h = blocks.map(hex);
    await f.age(h, 3 * HOUR);
    await f.agePacks(3 * HOUR);
    // A backup started 4 h ago is still running: the cut-off is 4 h + grace ago.
    const running = await job('running', 4 * HOUR);
    expect(await gc(HOUR)).toMatchObject({ chunksFreed: 0 });
    await f.db.update(jobs).set({ state: 'succeeded' }).where(eq(jobs.id, running));
    // A backup interrupted and waiting to resume counts as well; a plain queued one does not.
    const interrupted = await job('queued', 5 * HOUR, true);
    await job('queued', 6 * HOUR, false);
    expect(await gc(HOUR)).toMatchObject({ chunksFreed: 0 });
    await f.db.update(jobs).set({ state: 'failed' }).where(eq(jobs.id, interrupted));
    expect(await gc(HOUR)).toMatchObject({ chunksFreed: 3, packsDeleted: 1 });
    expect(await hashesInIndex()).toEqual([]);
    expect(await packFiles()).toEqual([]);
  });

  it('never sweeps a block a backup touched when reusing it', async () => {
    const blocks = [block(), block(), block(), block()];
    await f.storeBlocks(blocks);
    const h = blocks.map(hex);
    await f.age(h, 2 * HOUR);
    // Reuse: the agent owns 0, and 1 is in the store for another agent (proof only): both are
    // touched, and each is reported with whether the asking agent owns it (the other agent owns
    // a block of its own, 3, and not 1).
    expect([...(await touchOwnedChunks(f.db, f.agentId, [h[0]!], 0))]).toEqual([h[0]]);
    const other = randomUUID();
    await f.db.insert(agents).values({ id: other, name: `b-${other.slice(0, 8)}`, secretHash: 'x' });
    await f.db.insert(agentChunks).values({ agentId: other, hash: h[3]! });
    expect([...(await touchStoredChunks(f.db, other, [h[1]!], 0))]).toEqual([[h[1], false]]);
    expect([...(await touchStoredChunks(f.db, f.agentId, [h[1]!], 0))]).toEqual([[h[1], true]]);
    await f.db.delete(agentChunks).where(eq(agentChunks.agentId, other));
    await f.db.delete(agents).where(eq(agents.id, other));
    await f.agePacks(2 * HOUR);
    const report = await gc(HOUR);
    expect(report.chunksFreed).toBe(2);
    expect(await hashesInIndex()).toEqual([h[0]!, h[1]!].sort());
    // After the sweep, the touch finds nothing: the backup asks the agent for the block again.
    expect((await touchStoredChunks(f.db, f.agentId, [h[2]!, h[3]!], 0)).size).toBe(0);
    expect((await touchOwnedChunks(f.db, f.agentId, [h[2]!], 0)).size).toBe(0);
  });

  it('keeps a block whose touch commits while the sweep waits for its row', async () => {
    const blocks = [block(), block()];
    await f.storeBlocks(blocks);
    const [touched, other] = blocks.map(hex) as [string, string];
    await f.age([touched, other], 2 * HOUR);
    await f.agePacks(2 * HOUR);
    // A backup's touch holds the row (uncommitted) while the collection lists and sweeps. On
    // PostgreSQL the sweep's DELETE waits for the row lock and re-checks touched_at; on PGlite
    // (one connection) the collection waits for the transaction. Either way the block stays.
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    let locked!: () => void;
    const isLocked = new Promise<void>((r) => {
      locked = r;
    });
    const touch = f.db.transaction(async (tx) => {
      expect([...(await touchStoredChunks(tx, f.agentId, [touched], 0)).keys()]).toEqual([touched]);
      locked();
      await held;
    });
    await isLocked;
    const collecting = gc(HOUR);
    await new Promise((r) => setTimeout(r, 300));
    release();
    await touch;
    const report = await collecting;
    expect(report.chunksFreed).toBe(1);
    expect(await hashesInIndex()).toEqual([touched]);
  });

  it('touches only rows older than the touch interval, and never collects with a shorter grace', async () => {
    const blocks = [block(), block()];
    await f.storeBlocks(blocks);
    const [fresh, stale] = blocks.map(hex) as [string, string];
    await f.age([fresh], 10 * 60_000);
    await f.age([stale], 2 * HOUR);
    const before = new Map(
      (await f.db.select().from(chunks)).map((r) => [r.hash, r.touchedAt.getTime()] as const),
    );
    const present = await touchStoredChunks(f.db, f.agentId, [fresh, stale, hex(block())], 30 * 60_000);
    expect([...present.keys()].sort()).toEqual([fresh, stale].sort());
    const after = new Map(
      (await f.db.select().from(chunks)).map((r) => [r.hash, r.touchedAt.getTime()] as const),
    );
    expect(after.get(fresh)).toBe(before.get(fresh)); // fresh enough: not written
    expect(after.get(stale)!).toBeGreaterThan(Date.now() - 60_000);

    // A store whose backups touch only after 1 h (grace 2 h) never collects with less than 1 h.
    await f.reset({ gcGraceMs: 2 * HOUR });
    await f.storeBlocks([block()]);
    await f.age([], 0);
    const report = await gc(0);
    expect(report.graceMs).toBe(HOUR);
    expect(report.chunksFreed).toBe(0);
  });

  it('stops before removing anything when a recovery point manifest cannot be read', async () => {
    const ds = await f.datasource();
    const blocks = [block(), block()];
    await f.storeBlocks(blocks);
    const rp = await f.recoveryPoint(ds, [hex(blocks[0]!)]);
    await f.age(blocks.map(hex), 2 * HOUR);
    const file = path.join(f.manifests.dir, `${rp}.manifest`);
    await writeFile(file, (await readFile(file)).subarray(0, 10));
    await expect(gc(0)).rejects.toThrow(/cannot read the manifest of recovery point/);
    expect((await hashesInIndex()).length).toBe(2);
  });

  it('removes old manifests that have no recovery point, and only those', async () => {
    const ds = await f.datasource();
    const kept = await f.recoveryPoint(ds, []);
    const writeOrphan = async (id: string, agoMs: number) => {
      const w = await f.manifests.createWriter(id);
      await w.commit();
      const t = new Date(Date.now() - agoMs);
      await utimes(path.join(f.manifests.dir, `${id}.manifest`), t, t);
    };
    await writeOrphan('orphan-old', 2 * HOUR);
    await writeOrphan('orphan-new', 0);
    expect(await gc(HOUR, true)).toMatchObject({ orphanManifestsRemoved: 1 });
    expect(await f.manifests.exists('orphan-old')).toBe(true);
    expect(await gc(HOUR)).toMatchObject({ orphanManifestsRemoved: 1 });
    expect(await f.manifests.exists('orphan-old')).toBe(false);
    expect(await f.manifests.exists('orphan-new')).toBe(true);
    expect(await f.manifests.exists(kept)).toBe(true);
  });
});

describe('garbage collection: packs', () => {
  it('rewrites a mostly dead pack: live blocks stay byte-identical, the old pack waits in the trash', async () => {
    const ds = await f.datasource();
    const blocks = Array.from({ length: 10 }, (_, i) =>
      i % 3 ? block(40_000 + i) : textBlock(`r${i}`, 60_000),
    );
    const locs = await f.storeBlocks(blocks);
    const oldPack = locs[0]!.pack;
    const h = blocks.map(hex);
    const live = [h[1]!, h[3]!, h[6]!];
    await f.recoveryPoint(ds, live);
    // A dead pack (nothing in it is named) and a pack a writer still holds.
    const deadLocs = await f.storeBlocks([block(), block()]);
    const held = f.store.newWriter();
    await held.append(Buffer.alloc(32, 1), 0, Buffer.from('x'), 1);
    await held.flush();
    await f.age([...h, ...deadLocs.map((l) => l.hash)], 2 * HOUR);
    await f.agePacks(2 * HOUR);
    const oldSize = (await stat(f.store.pathOf(oldPack))).size;

    const report = await gc(HOUR);
    expect(report).toMatchObject({
      chunksFreed: 9,
      packsDeleted: 1,
      packsRewritten: 1,
      blocksMoved: 3,
      packsSkippedRecent: 1,
    });
    const liveStored = locs.filter((l) => live.includes(l.hash)).reduce((n, l) => n + l.storedSize, 0);
    expect(report.bytesMoved).toBe(liveStored);
    const deadSize = deadLocs.reduce((n, l) => n + l.storedSize + 41, 4);
    expect(report.packBytesReclaimed).toBe(deadSize + oldSize - (liveStored + 3 * 41));

    const index = await locateChunks(f.db, live);
    const newPack = index.get(live[0]!)!.pack;
    expect(newPack).not.toBe(oldPack);
    for (const hash of live) {
      const loc = index.get(hash)!;
      expect(loc.pack).toBe(newPack);
      const original = locs.find((l) => l.hash === hash)!;
      expect({ ...loc, pack: '', offset: 0 }).toEqual({ ...original, pack: '', offset: 0 });
      expect((await f.store.readStored(loc)).equals(await f.store.readStored(original))).toBe(true);
      expect((await f.store.readVerified(loc)).equals(blocks[h.indexOf(hash)]!)).toBe(true);
    }
    const files = await packFiles();
    expect(files).toContain(newPack);
    expect(files).not.toContain(oldPack);
    expect(files).not.toContain(deadLocs[0]!.pack);
    expect(await readdir(f.store.trashDir)).toEqual([`${oldPack}.pack`]);

    // A reader that looked up the old location just before still finds the block (in the trash).
    const fresh = await ChunkStore.open(path.dirname(f.store.packsDir));
    try {
      const old = locs.find((l) => l.hash === live[0])!;
      expect((await fresh.readVerified(old)).equals(blocks[1]!)).toBe(true);
    } finally {
      await fresh.close();
    }

    // The next collection empties the trash; the held pack is still left alone.
    const next = await gc(HOUR);
    expect(next).toMatchObject({
      trashEmptied: 1,
      trashBytesFreed: oldSize,
      chunksFreed: 0,
      packsSkippedRecent: 2,
    });
    expect(await readdir(f.store.trashDir)).toEqual([]);
    const later = await ChunkStore.open(path.dirname(f.store.packsDir));
    try {
      const err = await later.readStored(locs[1]!).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ChunkStoreError);
      expect((err as ChunkStoreError).code).toBe('CHUNK_MISSING');
    } finally {
      await later.close();
    }
    await held.close();
    for (const hash of live) expect((await f.store.readVerified(index.get(hash)!)).length).toBeGreaterThan(0);
  });

  it('leaves alone a pack modified after the cut-off, and one whose live blocks are most of it', async () => {
    const ds = await f.datasource();
    const a = [block(), block(), block()];
    const b = [block(), block(), block()];
    const la = await f.storeBlocks(a);
    const lb = await f.storeBlocks(b);
    await f.recoveryPoint(ds, [hex(a[0]!), ...b.slice(0, 2).map(hex)]);
    await f.age([...a, ...b].map(hex), 2 * HOUR);
    // Pack a was written "just now" (a backup may be appending to it); pack b is 2/3 live.
    await f.agePacks(2 * HOUR, [lb[0]!.pack]);
    const report = await gc(HOUR);
    expect(report).toMatchObject({
      chunksFreed: 3,
      packsRewritten: 0,
      packsDeleted: 0,
      packsSkippedRecent: 1,
    });
    expect(await packFiles()).toEqual([la[0]!.pack, lb[0]!.pack].sort());
    // Once old enough, pack a (1/3 live) is rewritten.
    await f.agePacks(2 * HOUR, [la[0]!.pack]);
    expect(await gc(HOUR)).toMatchObject({ packsRewritten: 1, blocksMoved: 1 });
    const loc = (await locateChunks(f.db, [hex(a[0]!)])).get(hex(a[0]!))!;
    expect((await f.store.readVerified(loc)).equals(a[0]!)).toBe(true);
  });

  it('does not rewrite a pack with a damaged live block', async () => {
    const ds = await f.datasource();
    const blocks = [block(), block(), block(), block()];
    const locs = await f.storeBlocks(blocks, { compress: false });
    await f.recoveryPoint(ds, [hex(blocks[0]!)]);
    await f.age(blocks.map(hex), 2 * HOUR);
    const file = f.store.pathOf(locs[0]!.pack);
    const bytes = await readFile(file);
    bytes[locs[0]!.offset + 7]! ^= 0xff;
    await writeFile(file, bytes);
    await f.agePacks(2 * HOUR);
    const report = await gc(HOUR);
    expect(report).toMatchObject({ chunksFreed: 3, packsRewritten: 0, packsSkippedDamaged: 1 });
    expect(await packFiles()).toEqual([locs[0]!.pack]);
    const [row] = await f.db
      .select()
      .from(chunks)
      .where(inArray(chunks.hash, [hex(blocks[0]!)]));
    expect(row?.pack).toBe(locs[0]!.pack);
  });
});
