import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { BlobServiceClient } from '@azure/storage-blob';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AZURITE_KEY, type Azurite, startAzurite } from '../../../test/emulators/azurite.ts';
import { type FaultProxy, startFaultProxy } from '../../../test/emulators/fault-proxy.ts';
import {
  S3RVER_ACCESS_KEY_ID,
  S3RVER_SECRET_ACCESS_KEY,
  type S3Emulator,
  startS3Emulator,
} from '../../../test/emulators/s3.ts';
import { AzureBackend, type AzureBackendOptions } from './azure-backend.ts';
import { type VaultBackend, VaultNotFoundError } from './backend.ts';
import { backendConformance, type ConformanceTarget, id, listAll, packId } from './backend-conformance.ts';
import { VaultBackendError } from './errors.ts';
import { LocalBackend } from './local-backend.ts';
import { openBackend } from './open-backend.ts';
import { S3Backend, type S3BackendOptions } from './s3-backend.ts';

/*
 * The shared conformance suite against all three backends — local (temp folder), Azure
 * (Azurite) and S3 (s3rver), the emulators as real child processes — and the remote
 * backends' retry behaviour through a proxy that fails requests on a real socket.
 */

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** Fast backoff for tests; the bound on attempts is what is checked. */
const FAST_RETRY = { maxAttempts: 3, baseDelayMs: 5, maxDelayMs: 20 };
const PAGE = 7;

let azurite: Azurite;
let s3: S3Emulator;
const scratch: string[] = [];

beforeAll(async () => {
  [azurite, s3] = await Promise.all([startAzurite(), startS3Emulator()]);
  await azure({ prefix: '' }).create();
  await s3b({ prefix: '' }).create();
});

afterAll(async () => {
  await Promise.all([azurite?.stop(), s3?.stop()]);
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

async function tempDir(label: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `holdfast-vault-${label}-`));
  scratch.push(dir);
  return dir;
}

function uniquePrefix(): string {
  return `t-${randomBytes(6).toString('hex')}`;
}

function azure(opts: Partial<AzureBackendOptions> & { url?: string } = {}): AzureBackend {
  return new AzureBackend({
    connectionString: azurite.connectionString(opts.url),
    container: 'vault',
    listPageSize: PAGE,
    retry: FAST_RETRY,
    ...opts,
  });
}

const s3Clients: S3Backend[] = [];
function s3b(opts: Partial<S3BackendOptions> & { url?: string } = {}): S3Backend {
  const b = new S3Backend({
    endpoint: opts.url ?? s3.url,
    bucket: 'vault',
    credentials: { accessKeyId: S3RVER_ACCESS_KEY_ID, secretAccessKey: S3RVER_SECRET_ACCESS_KEY },
    listPageSize: PAGE,
    retry: FAST_RETRY,
    ...opts,
  });
  s3Clients.push(b);
  return b;
}
afterAll(() => {
  for (const c of s3Clients) c.destroy();
});

/** A save through a proxy that cuts the upload after 1 MiB, every attempt. */
async function breakRemoteSave(
  targetPort: number,
  make: (proxyUrl: string) => VaultBackend,
  file: string,
  data: Buffer,
): Promise<{ mustBeAbsent: boolean }> {
  const proxy = await startFaultProxy(targetPort);
  try {
    proxy.failNext(Number.POSITIVE_INFINITY, { kind: 'cut-upload', afterBytes: 1024 * 1024 });
    const err = await make(proxy.url)
      .save(file, data)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).toBeInstanceOf(VaultBackendError);
    expect((err as VaultBackendError).attempts).toBe(FAST_RETRY.maxAttempts);
    return { mustBeAbsent: true };
  } finally {
    await proxy.close();
  }
}

/** Saves in a child process and SIGKILLs it as soon as its temp file shows up. */
async function breakLocalSave(root: string, file: string, data: Buffer): Promise<{ mustBeAbsent: boolean }> {
  const dataFile = path.join(await tempDir('payload'), 'data');
  await writeFile(dataFile, data);
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(HERE, 'conformance-save-child.ts'), root, file, dataFile],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let out = '';
  child.stdout!.on('data', (c: Buffer) => {
    out += c.toString();
  });
  while (!out.includes('ready')) {
    if (child.exitCode !== null) throw new Error('save child exited early');
    await new Promise((r) => setTimeout(r, 10));
  }
  const dir = path.join(root, path.dirname(file));
  const base = path.basename(file);
  child.stdin!.write('go\n');
  for (;;) {
    if (out.includes('saved') || child.exitCode !== null) break;
    const names = await readdir(dir).catch(() => [] as string[]);
    if (names.some((n) => n !== base && n.includes(base))) {
      child.kill('SIGKILL');
      break;
    }
  }
  await exited;
  return { mustBeAbsent: false };
}

backendConformance('local folder', async (): Promise<ConformanceTarget> => {
  const root = await tempDir('local');
  return {
    backend: new LocalBackend(root),
    scheme: 'local:',
    secrets: [],
    breakASave: (file, data) => breakLocalSave(root, file, data),
  };
});

backendConformance('Azure Blob Storage (Azurite)', async (): Promise<ConformanceTarget> => {
  const prefix = uniquePrefix();
  return {
    backend: azure({ prefix }),
    scheme: 'azure:',
    secrets: [AZURITE_KEY],
    listPageSize: PAGE,
    breakASave: (file, data) => breakRemoteSave(azurite.port, (url) => azure({ prefix, url }), file, data),
  };
});

backendConformance('S3 (s3rver)', async (): Promise<ConformanceTarget> => {
  const prefix = uniquePrefix();
  return {
    backend: s3b({ prefix }),
    scheme: 's3:',
    secrets: [S3RVER_SECRET_ACCESS_KEY],
    listPageSize: PAGE,
    breakASave: (file, data) => breakRemoteSave(s3.port, (url) => s3b({ prefix, url }), file, data),
  };
});

const remotes = [
  {
    kind: 'Azure',
    port: () => azurite.port,
    make: (prefix: string, url?: string, retry = FAST_RETRY) => azure({ prefix, url, retry }),
    withWrongSecret: (prefix: string) =>
      azure({
        prefix,
        connectionString: azurite.connectionString(undefined, Buffer.from('not the key').toString('base64')),
      }),
    wrongSecret: Buffer.from('not the key').toString('base64'),
    missingContainer: () => azure({ container: 'no-such-container' }),
    rawKeys: async (prefix: string) => {
      const c = BlobServiceClient.fromConnectionString(azurite.connectionString()).getContainerClient(
        'vault',
      );
      const keys: string[] = [];
      for await (const item of c.listBlobsFlat({ prefix: `${prefix}/` })) keys.push(item.name);
      return keys.sort();
    },
  },
  {
    kind: 'S3',
    port: () => s3.port,
    make: (prefix: string, url?: string, retry = FAST_RETRY) => s3b({ prefix, url, retry }),
    withWrongSecret: (prefix: string) =>
      // s3rver checks the access key id but not SigV4 signatures: both are wrong here.
      s3b({ prefix, credentials: { accessKeyId: 'WRONGKEYID', secretAccessKey: 'not-the-secret-key' } }),
    wrongSecret: 'not-the-secret-key',
    missingContainer: () => s3b({ bucket: 'no-such-bucket' }),
    rawKeys: async (prefix: string) => {
      const c = new S3Client({
        endpoint: s3.url,
        region: 'us-east-1',
        forcePathStyle: true,
        credentials: { accessKeyId: S3RVER_ACCESS_KEY_ID, secretAccessKey: S3RVER_SECRET_ACCESS_KEY },
      });
      try {
        const res = await c.send(new ListObjectsV2Command({ Bucket: 'vault', Prefix: `${prefix}/` }));
        return (res.Contents ?? []).map((o) => o.Key!).sort();
      } finally {
        c.destroy();
      }
    },
  },
];

for (const r of remotes) {
  describe(`${r.kind} backend: retries and errors`, () => {
    let proxy: FaultProxy;
    beforeAll(async () => {
      proxy = await startFaultProxy(r.port());
    });
    afterAll(async () => {
      await proxy?.close();
    });

    it('retries 503s and dropped connections, then succeeds', async () => {
      const b = r.make(uniquePrefix(), proxy.url, { maxAttempts: 4, baseDelayMs: 5, maxDelayMs: 20 });
      const data = randomBytes(3 * 1024 * 1024);
      const pack = packId();

      proxy.resetCounts();
      proxy.failNext(2, { kind: 'status', status: 503 });
      await b.save(pack, data);
      expect(proxy.failed).toBe(2);
      expect(proxy.requests).toBe(3);

      proxy.resetCounts();
      proxy.failNext(3, { kind: 'reset' });
      expect((await b.load(pack)).equals(data)).toBe(true);
      expect(proxy.failed).toBe(3);
      expect(proxy.requests).toBe(4);

      proxy.resetCounts();
      proxy.failNext(1, { kind: 'status', status: 500 });
      expect((await b.load(pack, { offset: 1000, length: 500 })).equals(data.subarray(1000, 1500))).toBe(
        true,
      );
      proxy.failNext(1, { kind: 'status', status: 429 });
      expect(await b.stat(pack)).toEqual({ size: data.length });
      proxy.failNext(1, { kind: 'reset' });
      expect(await listAll(b, 'data')).toEqual([[pack, data.length]]);
      proxy.failNext(1, { kind: 'status', status: 502 });
      await b.remove(pack);
      expect(proxy.failed).toBe(4);
      expect(await b.stat(pack)).toBeUndefined();
    });

    it('gives up after the bounded number of attempts with a clear error', async () => {
      const b = r.make(uniquePrefix(), proxy.url, { maxAttempts: 3, baseDelayMs: 5, maxDelayMs: 20 });
      proxy.resetCounts();
      proxy.failNext(Number.POSITIVE_INFINITY, { kind: 'status', status: 503 });
      try {
        const pack = packId();
        const err = await b.save(pack, Buffer.from('x')).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(VaultBackendError);
        const e = err as VaultBackendError;
        expect(e.attempts).toBe(3);
        expect(e.transient).toBe(true);
        expect(e.status).toBe(503);
        expect(e.message).toContain(b.name);
        expect(e.message).toContain(`save ${pack}`);
        expect(e.message).toMatch(/failed after 3 attempts: HTTP 503/);
        expect(proxy.requests).toBe(3);

        proxy.resetCounts();
        proxy.failNext(Number.POSITIVE_INFINITY, { kind: 'reset' });
        await expect(b.load(pack)).rejects.toThrow(/failed after 3 attempts/);
        expect(proxy.requests).toBe(3);
      } finally {
        proxy.heal();
      }
    });

    it('does not retry a missing object, wrong credentials or a missing container', async () => {
      const prefix = uniquePrefix();
      const b = r.make(prefix, proxy.url);
      proxy.resetCounts();
      await expect(b.load(`keys/${id()}`)).rejects.toBeInstanceOf(VaultNotFoundError);
      expect(proxy.requests).toBe(1);

      const wrong = r.withWrongSecret(prefix);
      const err = await wrong.save(`keys/${id()}`, Buffer.from('x')).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(VaultBackendError);
      expect((err as VaultBackendError).attempts).toBe(1);
      expect((err as VaultBackendError).status).toBe(403);
      expect((err as Error).message).not.toContain(r.wrongSecret);
      expect(wrong.name).not.toContain(r.wrongSecret);

      const missing = r.missingContainer();
      const e2 = await missing.load(`keys/${id()}`).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(e2).toBeInstanceOf(VaultBackendError);
      expect(e2).not.toBeInstanceOf(VaultNotFoundError);
      expect((e2 as Error).message).toMatch(/does not exist \(create the vault first\)/);
      await expect(missing.save(`keys/${id()}`, Buffer.from('x'))).rejects.toThrow(/does not exist/);
      await expect(listAll(missing, 'keys')).rejects.toThrow(/does not exist/);
    });

    it("stores objects as <prefix>/<path>, restic's layout, isolated from other prefixes", async () => {
      const [p1, p2] = [uniquePrefix(), `${uniquePrefix()}/nested`];
      const a = r.make(p1);
      const c = r.make(p2);
      const key = `keys/${id()}`;
      const pack = packId('ab');
      await a.save(key, Buffer.from('k'));
      await a.save(pack, Buffer.from('p'));
      await a.save('config', Buffer.from('c'));
      await c.save(`keys/${id()}`, Buffer.from('other'));
      expect(await r.rawKeys(p1)).toEqual([`${p1}/config`, `${p1}/${pack}`, `${p1}/${key}`].sort());
      expect(await listAll(a, 'keys')).toEqual([[key, 1]]);
      expect((await listAll(c, 'keys')).length).toBe(1);
      expect(a.name).toBe(`${r.kind === 'Azure' ? 'azure' : 's3'}:vault/${p1}`);
      expect(c.name).toBe(`${r.kind === 'Azure' ? 'azure' : 's3'}:vault/${p2}`);
    });

    it('create() makes a new container or bucket and is idempotent', async () => {
      const name = `new-${randomBytes(4).toString('hex')}`;
      const b = r.kind === 'Azure' ? azure({ container: name }) : s3b({ bucket: name });
      await expect(b.load('config')).rejects.toThrow(/does not exist/);
      await b.create();
      await b.create();
      await b.save('config', Buffer.from('cfg'));
      expect((await b.load('config')).toString()).toBe('cfg');
    });
  });
}

describe('openBackend', () => {
  it('opens each kind from a spec, reading secrets from files', async () => {
    const dir = await tempDir('open');
    const csFile = path.join(dir, 'azure-connection-string');
    await writeFile(csFile, `${azurite.connectionString()}\n`, { mode: 0o600 });
    const credFile = path.join(dir, 's3-credentials');
    await writeFile(
      credFile,
      `# vault keys\nAWS_ACCESS_KEY_ID=${S3RVER_ACCESS_KEY_ID}\nAWS_SECRET_ACCESS_KEY=${S3RVER_SECRET_ACCESS_KEY}\n`,
      { mode: 0o600 },
    );
    const prefix = uniquePrefix();
    const backends = [
      await openBackend({ type: 'local', path: path.join(dir, 'vault') }, { create: true }),
      await openBackend(
        { type: 'azure', container: 'opened', connectionStringFile: csFile, prefix },
        { create: true, retry: FAST_RETRY },
      ),
      await openBackend(
        { type: 's3', endpoint: s3.url, bucket: 'opened', credentialsFile: credFile, prefix },
        { create: true, retry: FAST_RETRY },
      ),
    ];
    expect(backends.map((b) => b.name)).toEqual([
      `local:${path.join(dir, 'vault')}`,
      `azure:opened/${prefix}`,
      `s3:opened/${prefix}`,
    ]);
    for (const b of backends) {
      const key = `keys/${id()}`;
      await b.save(key, Buffer.from(b.name));
      expect((await b.load(key)).toString()).toBe(b.name);
      expect(await listAll(b, 'keys')).toEqual([[key, b.name.length]]);
      for (const secret of [AZURITE_KEY, S3RVER_SECRET_ACCESS_KEY]) expect(b.name).not.toContain(secret);
    }
    (backends[2] as S3Backend).destroy();
  });
});
