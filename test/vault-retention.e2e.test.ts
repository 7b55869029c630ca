import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resticOk } from '../server/vault/format/restic-cli.test-helpers.ts';
import { addDatasource, backup, fileHashes, KiB, MiB, waitJobEnd } from './e2e-helpers.ts';
import {
  adminArgs,
  cli,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
} from './harness.ts';

/*
 * Vault retention, soft delete, purge, prune and check end to end, through the CLI: online
 * backups of changing data; a soft-deleted point is hidden, listed with --deleted and still
 * restorable; undelete; a purge removes a point for good and prunes, after which restic's own
 * check --read-data passes and every remaining snapshot restores byte-identical with restic;
 * a group's online retention soft-deletes what it no longer keeps; a flipped byte in a pack
 * makes `vault check --read-data` exit 1 naming the recovery point it damages.
 */

const run = promisify(execFile);
const PASSPHRASE = 'correct horse battery staple 42';

interface Rp {
  id: string;
  datasourceId: string;
  tier: string;
  snapshotId: string | null;
  deletedAt: string | null;
  purgeAfter: string | null;
}

describe('vault retention, soft delete, purge, prune and check', () => {
  let server: TestServer;
  let alpha: TestAgent;
  let work: string;
  let vaultDir: string;
  let passFile: string;
  let srcA: string;
  let srcB: string;
  let dsA: string;
  let dsB: string;
  /** Vault recovery point ids by round: a[0] is A's first. */
  const a: string[] = [];
  const b: string[] = [];
  /** Copies of the sources as each vault point holds them, by vault rp id. */
  const expected = new Map<string, string>();
  const firstDiskB: string[] = [];

  const hf = (...args: string[]) => cli([...args, ...adminArgs(server)]);
  const restic = (args: string[]) => resticOk(vaultDir, PASSPHRASE, args);
  const listRps = async (...extra: string[]): Promise<Rp[]> => {
    const r = await hf('rp', 'list', '--json', ...extra);
    expect(r.code, r.stderr).toBe(0);
    return r.json as Rp[];
  };
  const ids = (rps: Rp[]) => rps.map((r) => r.id).sort();

  async function change(src: string, label: string, round: number) {
    await writeFile(path.join(src, 'unique.bin'), randomBytes(Math.round(1.5 * MiB)));
    await writeFile(path.join(src, 'note.txt'), `${label} round ${round}\n`);
  }

  async function onlineBackup(datasourceIds: string[]) {
    const args = ['online-backup', '--json', '--wait'];
    for (const id of datasourceIds) args.push('--datasource', id);
    const res = await hf(...args);
    expect(res.code, res.stderr + res.stdout).toBe(0);
    return res.json.result as { points: { rpId: string; datasourceId: string; snapshotId: string }[] };
  }

  async function snapshotDir(rpId: string, src: string) {
    const dir = path.join(work, 'expected', rpId);
    await mkdir(path.dirname(dir), { recursive: true });
    await run('cp', ['-a', src, dir]);
    expected.set(rpId, dir);
  }

  async function dataFiles(): Promise<Set<string>> {
    return new Set(
      (await readdir(path.join(vaultDir, 'data'), { recursive: true })).filter((f) =>
        /[0-9a-f]{64}$/.test(f),
      ),
    );
  }

  beforeAll(async () => {
    server = await startServer({ extraArgs: ['--retry-backoff', '1s'] });
    alpha = await startAgent(server, 'alpha');
    work = await tempDir('vault-retention');
    vaultDir = path.join(work, 'vault');
    passFile = path.join(work, 'pass');
    await writeFile(passFile, `${PASSPHRASE}\n`, { mode: 0o600 });
    srcA = path.join(work, 'a');
    srcB = path.join(work, 'b');
    for (const src of [srcA, srcB]) {
      await mkdir(src, { recursive: true });
      await writeFile(path.join(src, 'shared.bin'), randomBytes(256 * KiB));
    }
  });

  afterAll(async () => {
    await alpha?.stop();
    await server?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('copies three rounds of changing data of two datasources to the vault', async () => {
    const created = await hf('vault', 'create', '--path', vaultDir, '--passphrase-file', passFile, '--json');
    expect(created.code, created.stderr).toBe(0);
    dsA = await addDatasource(server, { agent: 'alpha', path: srcA });
    dsB = await addDatasource(server, { agent: 'alpha', path: srcB });
    // A is in a group with an online retention (applied later); B is in no group.
    const later = new Date(Date.now() + 12 * 3_600_000);
    const far = `${String(later.getHours()).padStart(2, '0')}:${String(later.getMinutes()).padStart(2, '0')}`;
    const group = await hf(
      'group',
      'create',
      'keep-one',
      '--member',
      `alpha:${srcA}`,
      '--retention-days',
      '14',
      '--rp-days',
      'sun',
      '--rp-times',
      far,
      '--sync-every',
      'rp-only',
      '--online-daily',
      far,
      '--online-retention-daily',
      '1',
      '--json',
    );
    expect(group.code, group.stderr).toBe(0);
    for (let round = 1; round <= 3; round++) {
      await change(srcA, 'A', round);
      await change(srcB, 'B', round);
      for (const ds of [dsA, dsB]) expect((await backup(server, ds)).state).toBe('succeeded');
      if (round === 1) firstDiskB.push(...ids(await listRps('--tier', 'disk', '--datasource', dsB)));
      const report = await onlineBackup([dsA, dsB]);
      expect(report.points).toHaveLength(2);
      const pa = report.points.find((p) => p.datasourceId === dsA)!.rpId;
      const pb = report.points.find((p) => p.datasourceId === dsB)!.rpId;
      a.push(pa);
      b.push(pb);
      await snapshotDir(pa, srcA);
      await snapshotDir(pb, srcB);
    }
    expect(ids(await listRps('--tier', 'vault'))).toEqual([...a, ...b].sort());
  });

  it('soft delete hides a vault point, lists it with --deleted, keeps it restorable; undelete brings it back', async () => {
    const del = await hf('rp', 'delete', b[1]!);
    expect(del.code, del.stderr).toBe(0);
    expect(del.stdout).toMatch(/soft-deleted/);
    expect(ids(await listRps('--tier', 'vault'))).not.toContain(b[1]);
    const deleted = await listRps('--deleted');
    expect(ids(deleted)).toEqual([b[1]!]);
    const purgeAfter = new Date(deleted[0]!.purgeAfter!).getTime();
    expect(purgeAfter - Date.now()).toBeGreaterThan(13.9 * 24 * 3_600_000);
    // the vault itself says so: restic sees the tag
    const stdout = await restic(['snapshots', '--json', '--tag', `rp:${b[1]}`]);
    const [snap] = JSON.parse(stdout) as { id: string; tags: string[] }[];
    expect(snap!.tags.some((t) => t.startsWith('holdfast-deleted:'))).toBe(true);
    expect(snap!.id).toBe(deleted[0]!.snapshotId);

    const target = path.join(work, 'restore-deleted');
    const job = await server.api<{ id: string }>('POST', '/restores', { rpId: b[1], target });
    const done = await waitJobEnd(server, job.id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    expect(await fileHashes(target)).toEqual(await fileHashes(expected.get(b[1]!)!));
    await rm(target, { recursive: true, force: true });

    const undel = await hf('rp', 'undelete', b[1]!, '--json');
    expect(undel.code, undel.stderr).toBe(0);
    expect(undel.json.outcome).toBe('undeleted');
    expect(ids(await listRps('--tier', 'vault'))).toContain(b[1]);
    expect(await listRps('--deleted')).toEqual([]);

    // a disk point is deleted at once
    const diskDel = await hf('rp', 'delete', firstDiskB[0]!, '--json');
    expect(diskDel.code, diskDel.stderr).toBe(0);
    expect(diskDel.json.outcome).toBe('deleted');
    expect(ids(await listRps('--tier', 'disk'))).not.toContain(firstDiskB[0]);
  });

  it('purge removes a point for good and prunes; restic checks and restores every remaining snapshot', async () => {
    const res = await hf('rp', 'purge', b[0]!, '--json');
    expect(res.code, res.stderr + res.stdout).toBe(0);
    expect(res.json.purged.map((p: { rpId: string }) => p.rpId)).toEqual([b[0]]);
    expect(res.json.purged[0].reason).toBe('requested');
    expect(res.json.softDeleted).toEqual([]); // retention is not applied by a purge
    // B1's own blocks (its unique.bin) are freed
    expect(res.json.prune.packsDeleted + res.json.prune.packsRewritten).toBeGreaterThan(0);
    expect(res.json.prune.bytesFreed).toBeGreaterThan(MiB);
    expect(ids(await listRps('--tier', 'vault'))).not.toContain(b[0]);
    expect(await listRps('--deleted')).toEqual([]);

    const checkOut = await restic(['check', '--read-data']);
    expect(checkOut).toMatch(/no errors were found/);
    const stdout = await restic(['snapshots', '--json']);
    const snaps = JSON.parse(stdout) as { id: string; tags: string[]; paths: string[] }[];
    const rpOf = (s: { tags: string[] }) => s.tags.find((t) => t.startsWith('rp:'))!.slice(3);
    expect(snaps.map(rpOf).sort()).toEqual([...a, b[1]!, b[2]!].sort());
    for (const s of snaps) {
      const out = path.join(work, 'restic-out', s.id);
      await restic(['restore', s.id, '--target', out]);
      expect(await fileHashes(path.join(out, s.paths[0]!))).toEqual(await fileHashes(expected.get(rpOf(s))!));
    }
    await rm(path.join(work, 'restic-out'), { recursive: true, force: true });

    // the mirror follows the prune: Holdfast restores a point whose blocks were repacked
    const target = path.join(work, 'restore-after-prune');
    const job = await server.api<{ id: string }>('POST', '/restores', { rpId: b[2], target });
    const done = await waitJobEnd(server, job.id);
    expect(done.state, done.error ?? '').toBe('succeeded');
    expect(await fileHashes(target)).toEqual(await fileHashes(expected.get(b[2]!)!));
    await rm(target, { recursive: true, force: true });
  });

  it("retention soft-deletes what a group's online retention no longer keeps (daily 1: the newest)", async () => {
    const dry = await hf('vault', 'prune', '--dry-run', '--json');
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.json.dryRun).toBe(true);
    expect(dry.json.softDeleted.map((p: { rpId: string }) => p.rpId).sort()).toEqual([a[0], a[1]].sort());
    expect(await listRps('--deleted')).toEqual([]);

    const res = await hf('vault', 'prune', '--json');
    expect(res.code, res.stderr).toBe(0);
    expect(res.json.policies).toEqual({ 'keep-one': { daily: 1, weekly: 0, monthly: 0, yearly: 0 } });
    expect(res.json.softDeleted.map((p: { rpId: string }) => p.rpId).sort()).toEqual([a[0], a[1]].sort());
    expect(res.json.purged).toEqual([]); // within their 14 days
    expect(ids(await listRps('--deleted'))).toEqual([a[0]!, a[1]!].sort());
    // the newest of A and every point of B (no group, no policy) stay
    expect(ids(await listRps('--tier', 'vault'))).toEqual([a[2]!, b[1]!, b[2]!].sort());
    const text = await hf('vault', 'prune', '--dry-run');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stdout).toMatch(/soft-deleted \(would be\): 0/);
    expect(text.stdout).toContain(a[0]!); // awaiting purge
    await restic(['check']);
  });

  it('vault check --read-data exits 1 on a damaged pack and names the recovery point it affects', async () => {
    await change(srcB, 'B', 4);
    expect((await backup(server, dsB)).state).toBe('succeeded');
    const before = await dataFiles();
    const report = await onlineBackup([dsB]);
    const b4 = report.points[0]!.rpId;
    const fresh = [...(await dataFiles())].filter((f) => !before.has(f));
    expect(fresh.length).toBeGreaterThan(0);
    // after the prune, the online backup deduplicated against the mirror: restic agrees nothing is missing
    await restic(['check', '--read-data']);
    const clean = await hf('vault', 'check', '--json');
    expect(clean.code, clean.stderr).toBe(0);
    expect(clean.json.ok).toBe(true);

    let biggest = '';
    let size = 0;
    for (const f of fresh) {
      const s = (await stat(path.join(vaultDir, 'data', f))).size;
      if (s > size) [biggest, size] = [f, s];
    }
    const fh = await open(path.join(vaultDir, 'data', biggest), 'r+');
    const byte = Buffer.alloc(1);
    await fh.read(byte, 0, 1, 100);
    byte[0] = byte[0]! ^ 0xff;
    await fh.write(byte, 0, 1, 100);
    await fh.close();

    const text = await hf('vault', 'check', '--read-data');
    expect(text.code).toBe(1);
    expect(text.stdout).toMatch(/pack-damaged/);
    expect(text.stdout).toContain(b4);
    const json = await hf('vault', 'check', '--read-data', '--json');
    expect(json.code).toBe(1);
    expect(json.json.ok).toBe(false);
    expect(json.json.affectedRecoveryPoints.map((x: { rpId: string }) => x.rpId)).toEqual([b4]);
    expect(json.json.affectedRecoveryPoints[0].inCatalog).toBe(true);
  });
});
