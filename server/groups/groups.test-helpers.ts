import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { eq } from 'drizzle-orm';
import { openTestDatabase } from '../chunk-store/test-database.test-helpers.ts';
import type { Db } from '../db/database.ts';
import { agents, datasources, protectionGroups, recoveryPoints } from '../db/schema.ts';
import { ManifestStore } from '../manifest/manifest-store.ts';

/*
 * A migrated database (test-database helper) and a manifest store in a temp folder, with
 * shortcuts to enroll agents and to record recovery points (row + committed manifest) at chosen
 * times, as backups would.
 */
export interface GroupsFixture {
  db: Db;
  manifests: ManifestStore;
  agent(name: string): Promise<string>;
  datasource(agent: string, dsPath: string, kind?: 'files' | 'image'): Promise<string>;
  point(
    datasourceId: string,
    createdAt: Date,
    opts?: {
      origin?: (typeof recoveryPoints.$inferInsert)['origin'];
      status?: 'ok' | 'corrupt';
      tier?: 'disk' | 'vault';
    },
  ): Promise<string>;
  pointIds(datasourceId: string): Promise<string[]>;
  /** Back to no groups, datasources or points (agents stay): cheaper than a new database. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

export async function openGroupsFixture(): Promise<GroupsFixture> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-groups-'));
  const database = await openTestDatabase(dir);
  const manifests = await ManifestStore.open(dir);
  const { db } = database;
  const agentIds = new Map<string, string>();
  return {
    db,
    manifests,
    async agent(name) {
      const id = randomUUID();
      await db.insert(agents).values({ id, name, secretHash: 'test' });
      agentIds.set(name, id);
      return id;
    },
    async datasource(agent, dsPath, kind = 'files') {
      const id = randomUUID();
      await db
        .insert(datasources)
        .values({ id, agentId: agentIds.get(agent)!, path: dsPath, kind, blockSize: 1024 * 1024 });
      return id;
    },
    async point(datasourceId, createdAt, opts = {}) {
      const id = randomUUID();
      const writer = await manifests.createWriter(id);
      await writer.commit();
      await db.insert(recoveryPoints).values({
        id,
        datasourceId,
        jobId: randomUUID(),
        origin: opts.origin ?? 'recovery-point',
        status: opts.status ?? 'ok',
        tier: opts.tier ?? 'disk',
        createdAt,
        kind: 'files',
        consistency: 'crash-consistent',
        bytes: 0,
        files: 0,
        blocks: 0,
      });
      return id;
    },
    async pointIds(datasourceId) {
      const rows = await db
        .select({ id: recoveryPoints.id })
        .from(recoveryPoints)
        .where(eq(recoveryPoints.datasourceId, datasourceId))
        .orderBy(recoveryPoints.createdAt);
      return rows.map((r) => r.id);
    },
    async reset() {
      await db.delete(recoveryPoints);
      await db.delete(datasources);
      await db.delete(protectionGroups);
    },
    async close() {
      await database.drop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export const DAY = 24 * 60 * 60 * 1000;
/** A fixed "now" so that tests never depend on the clock. */
export const T0 = new Date('2025-03-03T12:00:00Z');
