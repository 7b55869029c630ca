import { readFile, rm, writeFile } from 'node:fs/promises';
import { and, eq, inArray } from 'drizzle-orm';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { listAlerts } from '../alerts/alerts.ts';
import { locateChunks } from '../chunk-store/chunk-index.ts';
import { touchOwnedChunks } from '../chunk-store/chunk-touch.ts';
import { agentChunks, chunks, datasources, quarantinedChunks, recoveryPoints } from '../db/schema.ts';
import { block, type Fixture, hex, openFixture, textBlock } from '../gc/store-fixture.test-helpers.ts';
import { completeConsistencyCheck, prepareConsistencyCheck } from './consistency.ts';
import { onBackupSucceeded, recheckCorruptRecoveryPoints, verifyRecoveryPoints } from './verify.ts';

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

const deps = () => ({ db: f.db, store: f.store, manifests: f.manifests, log: f.log });

async function statusOf(ids: string[]): Promise<Record<string, string>> {
  const rows = await f.db
    .select({ id: recoveryPoints.id, status: recoveryPoints.status })
    .from(recoveryPoints)
    .where(inArray(recoveryPoints.id, ids));
  return Object.fromEntries(rows.map((r) => [r.id, r.status]));
}

async function replicaState(dsId: string): Promise<string> {
  const [ds] = await f.db.select().from(datasources).where(eq(datasources.id, dsId));
  return ds!.replicaState;
}

async function activeAlerts(): Promise<string[]> {
  return (await listAlerts(f.db)).map((a) => `${a.kind} ${a.severity} ${a.subject}`).sort();
}

async function flipByte(file: string, at: number): Promise<void> {
  const bytes = await readFile(file);
  bytes[at]! ^= 0x5a;
  await writeFile(file, bytes);
}

/**
 * Two datasources. Pack 1 holds a, b, c; pack 2 holds d, e. Datasource A has points A1 (a, b, d)
 * and, newer, A2 (a, c); datasource B has B1 (b, e).
 */
async function scenario() {
  const dsA = await f.datasource();
  const dsB = await f.datasource();
  const [a, b, c, d, e] = [textBlock('a'), block(), block(), textBlock('d'), block()];
  const p1 = await f.storeBlocks([a, b, c]);
  const p2 = await f.storeBlocks([d, e]);
  const t = Date.now();
  const A1 = await f.recoveryPoint(dsA, [hex(a), hex(b), hex(d)], { createdAt: new Date(t - 3000) });
  const A2 = await f.recoveryPoint(dsA, [hex(a), hex(c)], { createdAt: new Date(t - 2000) });
  const B1 = await f.recoveryPoint(dsB, [hex(b), hex(e)], { createdAt: new Date(t - 1000) });
  return { dsA, dsB, blocks: { a, b, c, d, e }, p1, p2, A1, A2, B1 };
}

describe('verify', () => {
  it('checks every distinct block once and marks clean points verified', async () => {
    const s = await scenario();
    const report = await verifyRecoveryPoints(deps());
    expect(report).toMatchObject({
      rpsChecked: 3,
      blocksChecked: 5,
      corruptBlocks: [],
      corruptRps: [],
      quarantined: 0,
    });
    expect(report.bytesChecked).toBe([...s.p1, ...s.p2].reduce((n, l) => n + l.storedSize, 0));
    const rows = await f.db.select().from(recoveryPoints);
    expect(rows.every((r) => r.status === 'ok' && r.verifiedAt !== null)).toBe(true);
    expect(await activeAlerts()).toEqual([]);
  });

  it('quarantines a damaged block and a missing pack, marks every point naming them corrupt, raises alerts', async () => {
    const s = await scenario();
    const { a, b, d, e } = s.blocks;
    const locB = s.p1[1]!;
    await flipByte(f.store.pathOf(locB.pack), locB.offset + 100);
    // Read once through the store, so a cached handle would hide the deletion below.
    await f.store.readStored(s.p2[0]!);
    await rm(f.store.pathOf(s.p2[0]!.pack));

    const report = await verifyRecoveryPoints(deps(), { rpIds: [s.A1] });
    expect(report.rpsChecked).toBe(1);
    expect(report.blocksChecked).toBe(3);
    expect(report.quarantined).toBe(2);
    expect(report.corruptBlocks.map((x) => [x.hash, x.pack]).sort()).toEqual(
      [
        [hex(b), locB.pack],
        [hex(d), s.p2[0]!.pack],
      ].sort(),
    );
    const reasons = Object.fromEntries(report.corruptBlocks.map((x) => [x.hash, x.reason]));
    expect(reasons[hex(b)]).toMatch(/^CHUNK_CORRUPT/);
    expect(reasons[hex(d)]).toMatch(/^CHUNK_MISSING/);
    // A1 (verified) and B1 (not verified, but naming b) are corrupt; A2 is untouched.
    expect(report.corruptRps.map((r) => r.id).sort()).toEqual([s.A1, s.B1].sort());
    expect(await statusOf([s.A1, s.A2, s.B1])).toEqual({
      [s.A1]: 'corrupt',
      [s.A2]: 'ok',
      [s.B1]: 'corrupt',
    });

    // The blocks left the index and their ownership with them; the quarantine keeps the record.
    expect([...(await locateChunks(f.db, [hex(a), hex(b), hex(d), hex(e)])).keys()].sort()).toEqual(
      [hex(a), hex(e)].sort(),
    );
    expect(
      (
        await f.db
          .select()
          .from(agentChunks)
          .where(inArray(agentChunks.hash, [hex(b), hex(d)]))
      ).length,
    ).toBe(0);
    expect((await touchOwnedChunks(f.db, f.agentId, [hex(b), hex(d), hex(a)], 0)).size).toBe(1);
    const q = await f.db.select().from(quarantinedChunks);
    expect(q.map((r) => r.hash).sort()).toEqual([hex(b), hex(d)].sort());
    expect(q.find((r) => r.hash === hex(b))).toMatchObject({ pack: locB.pack, offset: locB.offset });

    // A's newest point (A2) is fine: consistent. B's newest (B1) is corrupt: inconsistent.
    expect(report.inconsistentDatasources).toEqual([s.dsB]);
    expect(await replicaState(s.dsA)).toBe('consistent');
    expect(await replicaState(s.dsB)).toBe('inconsistent');
    expect(await activeAlerts()).toEqual(
      [
        `verify-corruption critical datasource:${s.dsA}`,
        `verify-corruption critical datasource:${s.dsB}`,
        `replica-inconsistent warning datasource:${s.dsB}`,
      ].sort(),
    );

    // Verifying everything now also finds e (in the deleted pack); b and d are reported as quarantined.
    const all = await verifyRecoveryPoints(deps());
    expect(all.quarantined).toBe(1);
    expect(all.corruptBlocks.map((x) => x.hash).sort()).toEqual([hex(b), hex(d), hex(e)].sort());
    expect(all.corruptBlocks.find((x) => x.hash === hex(b))!.reason).toMatch(/^quarantined .*CHUNK_CORRUPT/);
    expect(all.corruptRps.map((r) => r.id).sort()).toEqual([s.A1, s.B1].sort());
  });

  it('heals: once the blocks are stored again, corrupt points become ok and the alerts clear', async () => {
    const s = await scenario();
    const { b, d, e } = s.blocks;
    await flipByte(f.store.pathOf(s.p1[1]!.pack), s.p1[1]!.offset + 5);
    await rm(f.store.pathOf(s.p2[0]!.pack));
    await verifyRecoveryPoints(deps());
    expect(await statusOf([s.A1, s.A2, s.B1])).toEqual({
      [s.A1]: 'corrupt',
      [s.A2]: 'ok',
      [s.B1]: 'corrupt',
    });

    // A later backup of A sends b and d again (they are no longer owned); e is still lost.
    await f.storeBlocks([b, d]);
    // A's newest point names nothing lost: its verify-corruption alert is resolved.
    expect(await onBackupSucceeded(deps(), s.dsA)).toEqual({ resolved: true });
    // B's newest point names e, which is still lost.
    expect(await onBackupSucceeded(deps(), s.dsB)).toEqual({ resolved: false });

    // B1 still misses e: not even read.
    expect(await recheckCorruptRecoveryPoints(deps(), { datasourceId: s.dsB })).toBeUndefined();
    const recheck = await recheckCorruptRecoveryPoints(deps(), { datasourceId: s.dsA });
    expect(recheck).toMatchObject({ rpsChecked: 1, healedRps: [s.A1], corruptRps: [] });
    expect(await statusOf([s.A1, s.B1])).toEqual({ [s.A1]: 'ok', [s.B1]: 'corrupt' });

    await f.storeBlocks([e]);
    const again = await verifyRecoveryPoints(deps(), { rpIds: [s.B1] });
    expect(again).toMatchObject({ healedRps: [s.B1], corruptRps: [], corruptBlocks: [] });
    // Every point of B verified clean: nothing corrupt left to alert about, but the replica
    // stays inconsistent until a consistency check.
    expect(await activeAlerts()).toEqual([`replica-inconsistent warning datasource:${s.dsB}`]);
    expect(await replicaState(s.dsB)).toBe('inconsistent');
    expect(await recheckCorruptRecoveryPoints(deps())).toBeUndefined();
    const rows = await f.db.select().from(recoveryPoints).where(eq(recoveryPoints.status, 'corrupt'));
    expect(rows).toEqual([]);
  });

  it('treats an unreadable manifest as a corrupt point, and refuses unknown ids', async () => {
    const s = await scenario();
    await rm(`${f.manifests.dir}/${s.A2}.manifest`);
    const report = await verifyRecoveryPoints(deps(), { rpIds: [s.A2, s.B1] });
    expect(report.corruptRps).toEqual([
      { id: s.A2, datasourceId: s.dsA, reason: expect.stringMatching(/^MANIFEST_MISSING/) },
    ]);
    expect(report.quarantined).toBe(0);
    expect(await replicaState(s.dsA)).toBe('inconsistent');
    await expect(verifyRecoveryPoints(deps(), { rpIds: ['no-such-rp'] })).rejects.toThrow(/not found/);
  });
});

describe('consistency check building blocks', () => {
  it('verifies the newest point, quarantines what is gone, and marks the replica consistent when done', async () => {
    const s = await scenario();
    await rm(f.store.pathOf(s.p2[0]!.pack));
    const prep = await prepareConsistencyCheck(deps(), s.dsB);
    expect(prep).toMatchObject({ datasourceId: s.dsB, rpId: s.B1, blocksChecked: 2, quarantined: 1 });
    expect(prep.corruptBlocks.map((x) => x.hash)).toEqual([hex(s.blocks.e)]);
    expect(await replicaState(s.dsB)).toBe('inconsistent');
    // The full re-read backup then sends e again (it is no longer owned), and the runner completes.
    expect((await touchOwnedChunks(f.db, f.agentId, [hex(s.blocks.e)], 0)).size).toBe(0);
    await f.storeBlocks([s.blocks.e]);
    await completeConsistencyCheck(f.db, s.dsB);
    expect(await replicaState(s.dsB)).toBe('consistent');
    expect(await activeAlerts()).toEqual([`verify-corruption critical datasource:${s.dsB}`]);
    expect(await onBackupSucceeded(deps(), s.dsB)).toEqual({ resolved: true });
    expect(await activeAlerts()).toEqual([]);

    const empty = await f.datasource();
    expect(await prepareConsistencyCheck(deps(), empty)).toMatchObject({ rpId: null, corruptBlocks: [] });
    await expect(prepareConsistencyCheck(deps(), 'nope')).rejects.toThrow(/not found/);
    const [row] = await f.db
      .select()
      .from(chunks)
      .where(and(eq(chunks.hash, hex(s.blocks.e))));
    expect(row).toBeDefined();
  });
});
