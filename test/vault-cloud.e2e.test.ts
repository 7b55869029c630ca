import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addDatasource, backup, fileHashes, KiB, MiB, waitJobEnd } from './e2e-helpers.ts';
import { AZURITE_KEY, type Azurite, startAzurite } from './emulators/azurite.ts';
import { type FaultProxy, startFaultProxy } from './emulators/fault-proxy.ts';
import {
  S3RVER_ACCESS_KEY_ID,
  S3RVER_SECRET_ACCESS_KEY,
  type S3Emulator,
  startS3Emulator,
} from './emulators/s3.ts';
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
 * The vault on Azure Blob Storage (Azurite) and on S3 (s3rver), each set up through the CLI
 * (`vault create --backend azure|s3` with the secrets in files) on a real server with a real
 * agent, the storage behind a real HTTP proxy that fails a few requests during the online
 * backup (so the backend's retry warnings reach the log): online backup of a files
 * datasource, restore from the vault byte-identical, `vault status` numbers, restic's own
 * `check --read-data` of the objects, and no secret anywhere in the server's or CLI's output.
 */

const run = promisify(execFile);
const PASSPHRASE = 'cloud vault passphrase, not in any log';

interface Target {
  label: 'azure' | 's3';
  secrets: string[];
  /** `vault create` options besides the passphrase file. */
  createArgs(work: string, proxyUrl: string): Promise<string[]>;
  /** Every object in the vault: name -> size, read from the emulator directly. */
  objects(): Promise<Map<string, number>>;
  /** Downloads every object into `dir` (restic's local layout is the same). */
  download(dir: string): Promise<void>;
  emulatorPort(): number;
  start(): Promise<void>;
  stop(): Promise<void>;
}

function azureTarget(): Target {
  let azurite: Azurite;
  const container = 'holdfast-cloud';
  const client = () =>
    BlobServiceClient.fromConnectionString(azurite.connectionString()).getContainerClient(container);
  return {
    label: 'azure',
    secrets: [AZURITE_KEY, PASSPHRASE],
    async createArgs(work, proxyUrl) {
      const csFile = path.join(work, 'azure-connection-string');
      await writeFile(csFile, `${azurite.connectionString(proxyUrl)}\n`, { mode: 0o600 });
      return ['--backend', 'azure', '--container', container, '--connection-string-file', csFile];
    },
    async objects() {
      const out = new Map<string, number>();
      for await (const b of client().listBlobsFlat()) out.set(b.name, b.properties.contentLength ?? -1);
      return out;
    },
    async download(dir) {
      const c = client();
      for await (const b of c.listBlobsFlat()) {
        const file = path.join(dir, b.name);
        await mkdir(path.dirname(file), { recursive: true });
        await c.getBlobClient(b.name).downloadToFile(file);
      }
      for (const f of ['data', 'index', 'snapshots', 'keys', 'locks'])
        await mkdir(path.join(dir, f), { recursive: true });
    },
    emulatorPort: () => azurite.port,
    async start() {
      azurite = await startAzurite();
    },
    stop: async () => azurite?.stop(),
  };
}

function s3Target(): Target {
  let s3: S3Emulator;
  const bucket = 'holdfast-cloud';
  const client = () =>
    new S3Client({
      endpoint: s3.url,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: S3RVER_ACCESS_KEY_ID, secretAccessKey: S3RVER_SECRET_ACCESS_KEY },
    });
  return {
    label: 's3',
    secrets: [PASSPHRASE],
    async createArgs(work, proxyUrl) {
      const creds = path.join(work, 's3-credentials');
      await writeFile(
        creds,
        `[default]\naws_access_key_id = ${S3RVER_ACCESS_KEY_ID}\naws_secret_access_key = ${S3RVER_SECRET_ACCESS_KEY}\n`,
        { mode: 0o600 },
      );
      return ['--backend', 's3', '--endpoint', proxyUrl, '--bucket', bucket, '--credentials-file', creds];
    },
    async objects() {
      const out = new Map<string, number>();
      const c = client();
      let token: string | undefined;
      do {
        const page = await c.send(new ListObjectsV2Command({ Bucket: bucket, ContinuationToken: token }));
        for (const o of page.Contents ?? []) out.set(o.Key!, o.Size ?? -1);
        token = page.NextContinuationToken;
      } while (token);
      c.destroy();
      return out;
    },
    async download(dir) {
      // restic reaches s3rver itself: check the bucket in place (see the restic call below).
      void dir;
    },
    emulatorPort: () => s3.port,
    async start() {
      s3 = await startS3Emulator();
    },
    stop: async () => s3?.stop(),
  };
}

async function restic(repo: string, args: string[], env: NodeJS.ProcessEnv = {}) {
  // --no-lock for S3: s3rver (the shared emulator wrapper) refuses restic's lock PutObject
  const noLock = repo.startsWith('s3:') ? ['--no-lock'] : [];
  return run('restic', ['-r', repo, '--no-cache', ...noLock, ...args], {
    env: { ...process.env, RESTIC_PASSWORD: PASSPHRASE, ...env },
    maxBuffer: 64 * MiB,
  });
}

for (const target of [azureTarget(), s3Target()]) {
  describe(`a vault on ${target.label === 'azure' ? 'Azure Blob Storage (Azurite)' : 'S3 (s3rver)'}`, () => {
    let proxy: FaultProxy;
    let server: TestServer;
    let agent: TestAgent;
    let work: string;
    let src: string;
    let srcBytes = 0;
    const cliOutput: string[] = [];

    beforeAll(async () => {
      await target.start();
      proxy = await startFaultProxy(target.emulatorPort());
      // debug: everything the server would ever log about the vault is in the captured output
      server = await startServer({ extraArgs: ['--retry-backoff', '1s', '--log-level', 'debug'] });
      agent = await startAgent(server, `cloud-${target.label}`);
      work = await tempDir(`vault-${target.label}`);
      src = path.join(work, 'src');
      await mkdir(path.join(src, 'sub', 'deeper'), { recursive: true });
      for (let i = 0; i < 5; i++) await writeFile(path.join(src, `r${i}.bin`), randomBytes(900 * KiB + i));
      await writeFile(path.join(src, 'sub', 'text.txt'), 'cloud vault\n'.repeat(40_000));
      await writeFile(path.join(src, 'sub', 'deeper', 'empty'), '');
      for (const f of (await fileHashes(src)).keys()) srcBytes += (await stat(path.join(src, f))).size;
      await writeFile(path.join(work, 'pass'), `${PASSPHRASE}\n`, { mode: 0o600 });
    });

    afterAll(async () => {
      await agent?.stop();
      await server?.stop();
      await proxy?.close();
      await target.stop();
      if (work) await rm(work, { recursive: true, force: true });
    });

    it('vault create, online backup through failing requests, restore byte-identical, status', async () => {
      const create = await cli([
        'vault',
        'create',
        ...adminArgs(server),
        ...(await target.createArgs(work, proxy.url)),
        '--passphrase-file',
        path.join(work, 'pass'),
        '--json',
      ]);
      cliOutput.push(create.stdout, create.stderr);
      expect(create.code, create.stderr).toBe(0);
      expect(create.json.backend.type).toBe(target.label);

      const ds = await addDatasource(server, { agent: agent.name, path: src });
      expect((await backup(server, ds)).state).toBe('succeeded');

      // A few requests of the online backup fail (503): the backend retries them.
      proxy.resetCounts();
      proxy.failNext(3);
      const ob = await cli(['online-backup', ...adminArgs(server), '--datasource', ds, '--wait', '--json']);
      cliOutput.push(ob.stdout, ob.stderr);
      expect(ob.code, ob.stderr + ob.stdout).toBe(0);
      expect(ob.json.state).toBe('succeeded');
      expect(proxy.failed).toBe(3);
      expect(server.proc.output()).toMatch(/retrying/);
      const result = ob.json.result as {
        points: { rpId: string }[];
        packsUploaded: number;
        bytesUploaded: number;
      };
      expect(result.points).toHaveLength(1);

      const target_ = path.join(work, 'restored');
      const job = await server.api<{ id: string }>('POST', '/restores', {
        rpId: result.points[0]!.rpId,
        target: target_,
      });
      const done = await waitJobEnd(server, job.id, 120_000);
      expect(done.state, done.error ?? '').toBe('succeeded');
      expect(await fileHashes(target_)).toEqual(await fileHashes(src));

      const status = await cli(['vault', 'status', ...adminArgs(server), '--json']);
      cliOutput.push(status.stdout, status.stderr);
      expect(status.code, status.stderr).toBe(0);
      const s = status.json;
      const objects = await target.objects();
      const packs = [...objects].filter(([name]) => name.startsWith('data/'));
      expect(s.vault.backend.type).toBe(target.label);
      expect(s.snapshots).toBe(1);
      expect(s.recoveryPoints).toBe(1);
      expect(s.packs).toBe(packs.length);
      expect(s.packs).toBe(result.packsUploaded);
      expect(s.storedBytes).toBe(packs.reduce((n, [, size]) => n + size, 0));
      expect(s.storedBytes).toBe(result.bytesUploaded);
      // every block is distinct: the deduplicated data is the source, text compressed well
      expect(s.deduplicatedBytes).toBe(srcBytes);
      expect(s.logicalBytes).toBe(srcBytes);
      expect(s.compressedBytes).toBeLessThan(s.deduplicatedBytes);
      expect(s.compressedBytes).toBeLessThanOrEqual(s.storedBytes);
      expect(s.lastOnlineJob.state).toBe('succeeded');
      // no lock left behind once the job ended
      expect([...objects.keys()].filter((k) => k.startsWith('locks/'))).toEqual([]);
      const human = await cli(['vault', 'status', ...adminArgs(server)]);
      cliOutput.push(human.stdout, human.stderr);
      expect(human.stdout).toMatch(new RegExp(`vault default: ${target.label} `));
    });

    it('restic checks every byte of the objects (--read-data) and restores the snapshot', async () => {
      let repo: string;
      let env: NodeJS.ProcessEnv = {};
      if (target.label === 'azure') {
        // restic 0.14's azure backend has no custom endpoint: check a copy of every object
        repo = path.join(work, 'copy');
        await target.download(repo);
      } else {
        repo = `s3:http://127.0.0.1:${target.emulatorPort()}/holdfast-cloud`;
        env = { AWS_ACCESS_KEY_ID: S3RVER_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: S3RVER_SECRET_ACCESS_KEY };
      }
      const check = await restic(repo, ['check', '--read-data'], env);
      expect(check.stdout).toMatch(/no errors were found/);
      const snaps = JSON.parse((await restic(repo, ['snapshots', '--json'], env)).stdout) as {
        id: string;
        paths: string[];
      }[];
      expect(snaps.map((x) => x.paths[0])).toEqual([src]);
      const out = path.join(work, 'restic-out');
      await restic(repo, ['restore', snaps[0]!.id, '--target', out], env);
      expect(await fileHashes(path.join(out, src))).toEqual(await fileHashes(src));
    });

    it('no secret appears in the server log or the CLI output', () => {
      const logs = server.proc.output() + cliOutput.join('\n');
      expect(logs.length).toBeGreaterThan(0);
      for (const secret of target.secrets) expect(logs.includes(secret), `secret in output`).toBe(false);
      expect(logs).not.toMatch(/AccountKey=|X-Amz-Signature=[0-9a-f]|Signature=[0-9a-f]{16}/);
      if (target.label === 's3') {
        // s3rver's secret key equals its key id: neither may appear (the id is in signed headers)
        expect(logs.includes(S3RVER_SECRET_ACCESS_KEY)).toBe(false);
      }
    });
  });
}
