import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { HttpError } from '../lib/http-client.ts';
import { type ProtocolErrorCode, ProtocolErrors } from '../protocol/errors.ts';
import { blockHash, hashHex } from '../protocol/hash.ts';
import type { ServerMessageOf } from '../protocol/messages.ts';
import { MAX_FRAME_BYTES } from '../protocol/version.ts';
import {
  adminArgs,
  cli,
  type JobView,
  type Proc,
  spawnHoldfast,
  startAgent,
  startServer,
  type TestAgent,
  type TestServer,
  tempDir,
  waitForJob,
} from './harness.ts';
import {
  type Closed,
  connectRaw,
  helloFor,
  pack,
  type RawSocket,
  rawAgent,
  readCredential,
} from './raw-agent.ts';

/*
 * Every refusal, end to end: real `holdfast server start` / `holdfast agent` processes and the
 * CLI, plus a hand-driven WebSocket client for frames a real agent would never send. Each
 * refusal must say why (exit code + message, or error frame + coded close, docs/protocol.md),
 * and a refused or misbehaving agent must never affect the server or the other agents.
 */

// ---- helpers ------------------------------------------------------------------------------

interface AgentView {
  id: string;
  name: string;
  online: boolean;
  revoked: boolean;
  lastSeenAt: string | null;
  connectedSince: string | null;
}

/** A refusal is a few frames on loopback: the close must follow the error frame promptly. */
const CLOSE_WITHIN_MS = 5_000;
/** `holdfast agent run` refused by the server: start-up, one handshake, exit (with headroom for a busy CI box). */
const REFUSED_AGENT_EXITS_WITHIN_MS = 12_000;

const sha256Hex = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const agentJson = (stateDir: string) => path.join(stateDir, 'agent.json');

async function within<T>(promise: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what()} (waited ${ms} ms)`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Exit code of a process expected to stop on its own. */
const exitCode = (proc: Proc, ms: number) =>
  within(proc.exited, ms, () => `process still running:\n${proc.output()}`);

/** A one-time enrollment token, straight from the API (the CLI path is covered where it matters). */
async function newToken(
  server: TestServer,
  ttl = '10m',
): Promise<{ token: string; fingerprint: string | null }> {
  return server.api('POST', '/enroll-tokens', { ttl });
}

/** `holdfast agent enroll` into a state folder that does not exist yet. */
async function enrollCli(server: TestServer, token: string, name: string, extra: string[] = []) {
  const stateDir = path.join(await tempDir(`enroll-${name}`), 'state');
  const args = ['agent', 'enroll', '--server', server.url, '--token', token, '--name', name];
  return { ...(await cli([...args, '--state', stateDir, ...extra])), stateDir };
}

/** Enrolls an identity without running it (for the raw client); returns its state folder. */
async function enrollOnly(server: TestServer, name: string): Promise<string> {
  const { token, fingerprint } = await newToken(server);
  const res = await enrollCli(server, token, name, fingerprint ? ['--fingerprint', fingerprint] : []);
  expect(res.code, res.stderr).toBe(0);
  return res.stateDir;
}

async function agentNamed(server: TestServer, name: string): Promise<AgentView | undefined> {
  return (await server.api<AgentView[]>('GET', '/agents')).find((a) => a.name === name);
}

/** The HttpError a request fails with. */
async function apiError(request: Promise<unknown>): Promise<HttpError> {
  const err = await request.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(HttpError);
  return err as HttpError;
}

/**
 * The connection was refused with `code` as docs/protocol.md says: an `error` frame with the
 * code and a human message, then (promptly) the close with the numeric code and the name.
 */
async function expectRefusal(sock: RawSocket, code: ProtocolErrorCode, message?: RegExp): Promise<Closed> {
  const error = await sock.next('error', 10_000);
  expect(error.code).toBe(code);
  expect(error.message).toMatch(/\w+ \w+/); // a sentence, not just a code
  if (message) expect(error.message).toMatch(message);
  const closed = await within(
    sock.closed,
    CLOSE_WITHIN_MS,
    () => `"${code}" error frame received, but no close followed`,
  );
  expect(closed.error).toEqual(error); // the error frame came before the close
  expect(closed.code).toBe(ProtocolErrors[code]);
  expect(closed.reason).toBe(code);
  return closed;
}

async function expectJobFailed(server: TestServer, jobId: string, code: ProtocolErrorCode): Promise<JobView> {
  const job = await waitForJob(server, jobId, 20_000);
  expect(job.state).toBe('failed');
  expect(job.error).toContain(code);
  expect(job.rpId).toBeNull();
  return job;
}

async function recoveryPointsOf(server: TestServer, datasourceId: string): Promise<unknown[]> {
  return server.api('GET', `/recovery-points?datasourceId=${datasourceId}`);
}

/**
 * Files under the server's block store named after `hex` or holding `data`: wherever a block
 * would be kept (chunk files or pack records; raw blocks are stored as sent), it shows here.
 */
async function storeTraces(server: TestServer, hex: string, data: Buffer): Promise<string[]> {
  const root = path.join(server.dataDir, 'store');
  const hits: string[] = [];
  for (const entry of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    if (entry.name.includes(hex) || (await readFile(file)).includes(data)) hits.push(file);
  }
  return hits;
}

// ---- 1-2. enrollment and agent credentials ------------------------------------------------

describe('identity refusals', () => {
  let server: TestServer;
  const cleanup: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    server = await startServer();
  });
  afterAll(async () => {
    for (const c of cleanup) await c();
    await server?.stop();
  });

  describe('agent enroll', () => {
    /** Refused with a non-zero exit and `reason` in the message; nothing written, nobody enrolled. */
    async function expectEnrollRefused(
      res: Awaited<ReturnType<typeof enrollCli>>,
      name: string,
      reason: RegExp,
    ) {
      cleanup.push(() => rm(path.dirname(res.stateDir), { recursive: true, force: true }));
      expect(res.code).not.toBe(0);
      expect(res.stderr).toMatch(/enrollment refused/);
      expect(res.stderr).toMatch(reason);
      expect(existsSync(agentJson(res.stateDir))).toBe(false);
      expect(await agentNamed(server, name)).toBeUndefined();
    }

    it('refuses an unknown token', async () => {
      const res = await enrollCli(server, `hfe_${randomBytes(32).toString('base64url')}`, 'stranger');
      await expectEnrollRefused(res, 'stranger', /unknown enrollment token/);
    });

    it('refuses a token that was already used', async () => {
      const { token } = await newToken(server);
      const first = await enrollCli(server, token, 'first');
      cleanup.push(() => rm(path.dirname(first.stateDir), { recursive: true, force: true }));
      expect(first.code, first.stderr).toBe(0);
      expect(existsSync(agentJson(first.stateDir))).toBe(true);

      const second = await enrollCli(server, token, 'second');
      await expectEnrollRefused(second, 'second', /already used/);
    });

    it('refuses an expired token', async () => {
      const created = await cli(['enroll-token', 'create', '--ttl', '1s', '--json', ...adminArgs(server)]);
      expect(created.code, created.stderr).toBe(0);
      await sleep(1500);
      const res = await enrollCli(server, created.json.token, 'late');
      await expectEnrollRefused(res, 'late', /expired/);
    });
  });

  describe('agent run', () => {
    let doomed: TestAgent | undefined;
    afterAll(async () => {
      await doomed?.stop();
    });

    it('disconnects a running agent when it is revoked; the agent stops, saying why', async () => {
      doomed = await startAgent(server, 'doomed');
      const revoke = await cli(['agents', 'revoke', 'doomed', ...adminArgs(server)]);
      expect(revoke.code, revoke.stderr).toBe(0);

      expect(await exitCode(doomed.proc, REFUSED_AGENT_EXITS_WITHIN_MS)).not.toBe(0);
      expect(doomed.proc.output()).toMatch(/server refused this agent: PROTO_ERR_REVOKED: .*revoked/);
      expect(await agentNamed(server, 'doomed')).toMatchObject({ revoked: true, online: false });
    });

    it('refuses a revoked agent that is started again', async () => {
      const stateDir = doomed?.stateDir ?? (await enrollOnly(server, 'doomed-too'));
      if (!doomed) expect((await cli(['agents', 'revoke', 'doomed-too', ...adminArgs(server)])).code).toBe(0);

      const again = spawnHoldfast(['agent', 'run', '--state', stateDir, '--log-level', 'warn']);
      cleanup.push(async () => void again.child.kill('SIGKILL'));
      expect(await exitCode(again, REFUSED_AGENT_EXITS_WITHIN_MS)).not.toBe(0);
      expect(again.output()).toMatch(
        /server refused this agent: PROTO_ERR_REVOKED: .*revoked by an administrator/,
      );
    });

    it('refuses an agent whose credential is wrong', async () => {
      const stateDir = await enrollOnly(server, 'forgetful');
      cleanup.push(() => rm(path.dirname(stateDir), { recursive: true, force: true }));
      const state = JSON.parse(await readFile(agentJson(stateDir), 'utf8'));
      const forged = { ...state, secret: `hfk_${randomBytes(32).toString('base64url')}` };
      await writeFile(agentJson(stateDir), JSON.stringify(forged));

      const run = spawnHoldfast(['agent', 'run', '--state', stateDir, '--log-level', 'warn']);
      cleanup.push(async () => void run.child.kill('SIGKILL'));
      expect(await exitCode(run, REFUSED_AGENT_EXITS_WITHIN_MS)).not.toBe(0);
      expect(run.output()).toMatch(
        /server refused this agent: PROTO_ERR_AUTH: unknown agent or wrong credential/,
      );
      expect((await agentNamed(server, 'forgetful'))?.online).toBe(false);
    });
  });
});

// ---- 3. certificate pinning ----------------------------------------------------------------

describe('certificate pinning', () => {
  let server: TestServer;
  let emptyData: string;
  const dirs: string[] = [];
  const wrongFingerprint = sha256Hex('not the server certificate');
  beforeAll(async () => {
    server = await startServer({ tls: true });
    emptyData = await tempDir('empty-data');
  });
  afterAll(async () => {
    await server?.stop();
    for (const d of [emptyData, ...dirs]) await rm(d, { recursive: true, force: true });
  });

  it('agent enroll refuses a wrong fingerprint before sending the token, which stays usable', async () => {
    const { token, fingerprint } = await newToken(server);
    expect(fingerprint).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);

    const wrong = await enrollCli(server, token, 'pinned', ['--fingerprint', wrongFingerprint]);
    dirs.push(path.dirname(wrong.stateDir));
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(/fingerprint mismatch/);
    expect(existsSync(agentJson(wrong.stateDir))).toBe(false);

    // The token was never sent, so it still enrolls the agent with the right fingerprint.
    const right = await enrollCli(server, token, 'pinned', ['--fingerprint', fingerprint!]);
    dirs.push(path.dirname(right.stateDir));
    expect(right.code, right.stderr).toBe(0);
    expect(JSON.parse(await readFile(agentJson(right.stateDir), 'utf8')).serverCert).toContain(
      'BEGIN CERTIFICATE',
    );
  });

  it('the admin CLI refuses a wrong fingerprint', async () => {
    // --data points at an empty folder: no certificate to fall back on, only the pin.
    const remote = ['--server', server.url, '--token', server.token, '--data', emptyData, '--json'];
    const wrong = await cli(['agents', 'list', ...remote, '--fingerprint', wrongFingerprint]);
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(/fingerprint mismatch.*refusing to send credentials/);
    expect(wrong.stdout).toBe('');

    const { fingerprint } = await newToken(server);
    const right = await cli(['agents', 'list', ...remote, '--fingerprint', fingerprint!]);
    expect(right.code, right.stderr).toBe(0);
    expect(Array.isArray(right.json)).toBe(true);
  });
});

// ---- 4-6. a misbehaving agent on the link --------------------------------------------------

describe('a misbehaving agent on the link', () => {
  let server: TestServer;
  /** A well-behaved agent process, connected before any abuse; it must never notice. */
  let steady: TestAgent;
  let steadySeen: string | null;
  let steadySrc: string;
  let steadyDatasource: string;
  /** One file under 1 MiB: a single block named SHA-256(content). Random, so incompressible. */
  const steadyFile = randomBytes(48 * 1024);
  let steadyRp: Promise<string> | undefined;
  /** The identity the raw client speaks as. */
  let intruderState: string;
  const sockets: RawSocket[] = [];

  beforeAll(async () => {
    server = await startServer();
    steadySrc = await tempDir('steady-src');
    await writeFile(path.join(steadySrc, 'letter.bin'), steadyFile);
    [steady, intruderState] = await Promise.all([
      startAgent(server, 'steady'),
      enrollOnly(server, 'intruder'),
    ]);
    steadySeen = (await agentNamed(server, 'steady'))!.connectedSince;
    steadyDatasource = (
      await server.api<{ id: string }>('POST', '/datasources', { agent: 'steady', path: steadySrc })
    ).id;
  });
  afterEach(() => {
    for (const s of sockets.splice(0)) s.close();
  });
  afterAll(async () => {
    await steady?.stop();
    await server?.stop();
    if (steadySrc) await rm(steadySrc, { recursive: true, force: true });
    if (intruderState) await rm(path.dirname(intruderState), { recursive: true, force: true });
  });

  const track = <S extends RawSocket>(s: S): S => {
    sockets.push(s);
    return s;
  };
  const intruder = async () => track(await rawAgent(server, intruderState));
  const bare = async () => track(await connectRaw(server));

  async function backupSteady(): Promise<JobView> {
    const job = await server.api<JobView>('POST', '/backups', { datasourceId: steadyDatasource });
    return waitForJob(server, job.id, 30_000);
  }
  /** A recovery point of the steady agent (made once, on first use). */
  function steadyRecoveryPoint(): Promise<string> {
    steadyRp ??= backupSteady().then((job) => {
      expect(job.state, job.error ?? '').toBe('succeeded');
      return job.rpId!;
    });
    return steadyRp;
  }

  /** Queues a backup of a fresh datasource of the intruder and waits for its backup.start. */
  async function intruderBackup(sock: RawSocket) {
    const ds = await server.api<{ id: string }>('POST', '/datasources', {
      agent: 'intruder',
      path: `/raw/${randomUUID()}`,
    });
    const job = await server.api<JobView>('POST', '/backups', { datasourceId: ds.id });
    const start = await sock.next('backup.start');
    expect(start.jobId).toBe(job.id);
    return { datasourceId: ds.id, jobId: job.id };
  }

  const fileEntry = (name: string, hashes: Buffer[], size: number) => ({
    type: 'file',
    path: name,
    size,
    mode: 0o644,
    uid: 1000,
    gid: 1000,
    mtimeMs: Date.now(),
    hashes,
  });

  describe('protocol refusals', () => {
    const nineMiB = 9 * 1024 * 1024;

    it.each<[string, () => Buffer | string, ProtocolErrorCode, RegExp]>([
      ['a text frame', () => 'hello?', 'PROTO_ERR_MALFORMED', /binary/],
      [
        'bytes that are not MessagePack',
        () => Buffer.from([0xc1, 0xc1, 0xc1, 0xc1]),
        'PROTO_ERR_MALFORMED',
        /MessagePack/,
      ],
      [
        'a MessagePack map that is no message',
        () => pack({ t: 'backup.gimme', all: true }),
        'PROTO_ERR_INVALID_MESSAGE',
        /backup\.gimme/,
      ],
      [
        'a MessagePack value that is not a map',
        () => pack([1, 2, 3]),
        'PROTO_ERR_INVALID_MESSAGE',
        /invalid/,
      ],
      [
        `a ${nineMiB}-byte frame (over MAX_FRAME_BYTES, under maxPayload)`,
        () =>
          pack({
            t: 'hello',
            versions: [1],
            agentId: 'a',
            secret: 's',
            agentVersion: 'x'.repeat(nineMiB),
            hostname: 'h',
          }),
        'PROTO_ERR_FRAME_TOO_LARGE',
        new RegExp(`exceeds ${MAX_FRAME_BYTES}`),
      ],
    ])('after the welcome: refuses %s', async (_what, frame, code, message) => {
      const sock = await intruder();
      await sock.sendRaw(frame());
      await expectRefusal(sock, code, message);
    });

    it.each<[string, () => Buffer | string, ProtocolErrorCode]>([
      ['a text frame', () => 'hello?', 'PROTO_ERR_MALFORMED'],
      ['bytes that are not MessagePack', () => Buffer.from([0xc1, 0xc1]), 'PROTO_ERR_MALFORMED'],
      [
        'a message other than hello',
        () => pack({ t: 'backup.fail', jobId: 'j', message: 'm' }),
        'PROTO_ERR_UNEXPECTED',
      ],
    ])('before the hello: refuses %s', async (_what, frame, code) => {
      const sock = await bare();
      await sock.sendRaw(frame());
      await expectRefusal(sock, code);
    });

    it('closes with 1009 a frame over twice MAX_FRAME_BYTES, before reading it', async () => {
      const sock = await intruder();
      const frame = pack({ ...helloFor(sock.cred), hostname: 'x'.repeat(2 * MAX_FRAME_BYTES + 1024) });
      expect(frame.length).toBeGreaterThan(2 * MAX_FRAME_BYTES);
      void sock.sendRaw(frame);
      const closed = await within(sock.closed, 15_000, () => 'no close after an oversized frame');
      expect(closed.code).toBe(1009);
    });

    it('refuses a hello with a wrong secret, even under the id of a connected agent', async () => {
      const sock = await bare();
      await sock.send(
        helloFor({ agentId: steady.id, secret: `hfk_${randomBytes(32).toString('base64url')}` } as never),
      );
      await expectRefusal(sock, 'PROTO_ERR_AUTH', /unknown agent or wrong credential/);
      expect((await agentNamed(server, 'steady'))?.online).toBe(true);
    });

    it('refuses a hello with no common protocol version', async () => {
      const sock = await bare();
      await sock.send(helloFor(await readCredential(intruderState), { versions: [99] }));
      await expectRefusal(sock, 'PROTO_ERR_VERSION', /agent speaks 99, server 2,1/);
    });

    it('refuses a second hello', async () => {
      const sock = await intruder();
      await sock.send(helloFor(sock.cred));
      await expectRefusal(sock, 'PROTO_ERR_UNEXPECTED', /hello was already received/);
    });

    it('refuses a message for a job that is not running', async () => {
      const sock = await intruder();
      await sock.send({
        t: 'backup.offer',
        jobId: 'no-such-job',
        seq: 1,
        hashes: [blockHash(Buffer.from('x'))],
      });
      await expectRefusal(sock, 'PROTO_ERR_UNEXPECTED', /no-such-job, which is not running/);
    });
  });

  describe('block refusals', () => {
    it('refuses a block that does not hash to its name, and stores nothing', async () => {
      const sock = await intruder();
      const { datasourceId, jobId } = await intruderBackup(sock);
      const hash = blockHash(randomBytes(1000));
      await sock.send({ t: 'backup.offer', jobId, seq: 1, hashes: [hash] });
      const need = await sock.next('backup.need');
      expect(need.hashes.map(hashHex)).toEqual([hashHex(hash)]);

      const forged = randomBytes(1000);
      await sock.send({ t: 'backup.block', jobId, hash, data: forged });
      await expectRefusal(sock, 'PROTO_ERR_HASH_MISMATCH', /does not match/);
      await expectJobFailed(server, jobId, 'PROTO_ERR_HASH_MISMATCH');
      expect(await recoveryPointsOf(server, datasourceId)).toEqual([]);
      expect(await storeTraces(server, hashHex(hash), forged)).toEqual([]);
    });

    /**
     * The intruder tries to put a block it does not have into a recovery point: `theirs` (the
     * steady agent's) and, for comparison, a hash that exists nowhere. Everything the server
     * says must be the same for both, so nothing can be learned about other agents' data.
     */
    async function tryToReference(hash: Buffer, opts: { offer: boolean }) {
      const sock = await intruder();
      const { datasourceId, jobId } = await intruderBackup(sock);
      let need: ServerMessageOf<'backup.need'> | undefined;
      if (opts.offer) {
        await sock.send({ t: 'backup.offer', jobId, seq: 1, hashes: [hash] });
        need = await sock.next('backup.need');
      }
      await sock.send({
        t: 'backup.entries',
        jobId,
        entries: [fileEntry('stolen.bin', [hash], steadyFile.length)],
      });
      await sock.send({ t: 'backup.end', jobId, bytesScanned: steadyFile.length, warnings: [] });
      const error = await sock.next('error', 10_000);
      const job = await waitForJob(server, jobId, 20_000);
      const rps = await recoveryPointsOf(server, datasourceId);
      const hide = (s: string | null | undefined) => s?.replaceAll(hashHex(hash), '<hash>');
      return {
        need: need?.hashes.map(hashHex),
        error: { code: error.code, message: hide(error.message) },
        closed: await within(sock.closed, CLOSE_WITHIN_MS, () => 'no close after the error frame'),
        job: { state: job.state, error: hide(job.error), rpId: job.rpId },
        rps,
      };
    }

    it('an offer of a block held by another agent is answered as for any unknown block; naming it without sending it fails', async () => {
      await steadyRecoveryPoint();
      const theirs = Buffer.from(sha256Hex(steadyFile), 'hex');
      const nowhere = blockHash(randomBytes(64));
      expect(await storeTraces(server, hashHex(theirs), steadyFile)).not.toEqual([]); // the store does hold it

      const stolen = await tryToReference(theirs, { offer: true });
      expect(stolen.need).toEqual([hashHex(theirs)]); // asked for it: the agent learns nothing
      // docs/protocol.md: entries may name requested blocks; ending without sending them is PROTO_ERR_UNEXPECTED.
      expect(stolen.error).toEqual({
        code: 'PROTO_ERR_UNEXPECTED',
        message: expect.stringMatching(/never sent/),
      });
      expect(stolen.closed).toMatchObject({
        code: ProtocolErrors.PROTO_ERR_UNEXPECTED,
        reason: 'PROTO_ERR_UNEXPECTED',
      });
      expect(stolen.job).toEqual({
        state: 'failed',
        error: expect.stringContaining('PROTO_ERR_UNEXPECTED'),
        rpId: null,
      });
      expect(stolen.rps).toEqual([]);

      const invented = await tryToReference(nowhere, { offer: true });
      expect({ ...invented, need: invented.need?.length, closed: invented.closed.code }).toEqual({
        ...stolen,
        need: 1,
        closed: stolen.closed.code,
      });
    });

    it("naming another agent's block without offering it is PROTO_ERR_UNKNOWN_BLOCK, as for a block that exists nowhere", async () => {
      await steadyRecoveryPoint();
      const theirs = Buffer.from(sha256Hex(steadyFile), 'hex');

      const stolen = await tryToReference(theirs, { offer: false });
      expect(stolen.error.code).toBe('PROTO_ERR_UNKNOWN_BLOCK');
      expect(stolen.error.message).toMatch(
        /"stolen.bin" names block <hash>, which the server does not hold for this agent \(never uploaded by it/,
      );
      expect(stolen.closed).toMatchObject({
        code: ProtocolErrors.PROTO_ERR_UNKNOWN_BLOCK,
        reason: 'PROTO_ERR_UNKNOWN_BLOCK',
      });
      expect(stolen.job).toEqual({
        state: 'failed',
        error: expect.stringContaining('PROTO_ERR_UNKNOWN_BLOCK'),
        rpId: null,
      });
      expect(stolen.rps).toEqual([]);

      const invented = await tryToReference(blockHash(randomBytes(64)), { offer: false });
      expect({ ...invented, closed: invented.closed.code }).toEqual({
        ...stolen,
        closed: stolen.closed.code,
      });
    });

    it('refuses a block nobody asked for, and stores nothing', async () => {
      const sock = await intruder();
      const { datasourceId, jobId } = await intruderBackup(sock);
      const data = randomBytes(1000);
      await sock.send({ t: 'backup.block', jobId, hash: blockHash(data), data });
      await expectRefusal(sock, 'PROTO_ERR_UNEXPECTED', /was not requested/);
      await expectJobFailed(server, jobId, 'PROTO_ERR_UNEXPECTED');
      expect(await recoveryPointsOf(server, datasourceId)).toEqual([]);
      expect(await storeTraces(server, hashHex(blockHash(data)), data)).toEqual([]);
    });

    it('refuses a several-block frame holding one block nobody asked for, and stores none of it', async () => {
      const sock = await intruder();
      const { datasourceId, jobId } = await intruderBackup(sock);
      const asked = randomBytes(1000);
      const stray = randomBytes(1000);
      await sock.send({ t: 'backup.offer', jobId, seq: 1, hashes: [blockHash(asked)] });
      await sock.next('backup.need');
      await sock.send({
        t: 'backup.blocks',
        jobId,
        blocks: [
          { hash: blockHash(asked), data: asked },
          { hash: blockHash(stray), data: stray },
        ],
      });
      await expectRefusal(sock, 'PROTO_ERR_UNEXPECTED', /was not requested/);
      await expectJobFailed(server, jobId, 'PROTO_ERR_UNEXPECTED');
      expect(await recoveryPointsOf(server, datasourceId)).toEqual([]);
      expect(await storeTraces(server, hashHex(blockHash(stray)), stray)).toEqual([]);
    });
  });

  describe('path escapes', () => {
    it('the restore API refuses selected paths with ".." and relative targets', async () => {
      const rpId = await steadyRecoveryPoint();
      const target = path.join(steadySrc, 'restored'); // absolute; never written: every request is refused

      const dotdot = await apiError(server.api('POST', '/restores', { rpId, target, paths: ['../etc'] }));
      expect(dotdot).toMatchObject({ status: 400, code: 'INVALID_INPUT' });
      expect(dotdot.message).toMatch(/restore path "\.\.\/etc" must name a path inside the recovery point/);

      const relative = await apiError(server.api('POST', '/restores', { rpId, target: 'relative/dir' }));
      expect(relative).toMatchObject({ status: 400, code: 'INVALID_INPUT' });
      expect(relative.message).toMatch(/restore target must be an absolute folder/);
      expect(existsSync(target)).toBe(false);
    });

    it.each(['../x', '/abs', 'a/../../x'])(
      'backup.entries naming %s is refused by validation',
      async (bad) => {
        const sock = await intruder();
        const { datasourceId, jobId } = await intruderBackup(sock);
        const entry = { type: 'dir', path: bad, mode: 0o755, uid: 0, gid: 0, mtimeMs: Date.now() };
        await sock.send({ t: 'backup.entries', jobId, entries: [entry] });
        await expectRefusal(sock, 'PROTO_ERR_INVALID_MESSAGE', /entries\.0\.path: path must be relative/);
        await expectJobFailed(server, jobId, 'PROTO_ERR_INVALID_MESSAGE');
        expect(await recoveryPointsOf(server, datasourceId)).toEqual([]);
      },
    );
  });

  it('after all of that, the server and the other agent are unaffected', async () => {
    expect(await server.api('GET', '/health')).toEqual({ ok: true });
    expect(steady.proc.child.exitCode).toBeNull();
    const view = (await agentNamed(server, 'steady'))!;
    expect(view.online).toBe(true);
    expect(view.connectedSince).toBe(steadySeen); // never reconnected: its link was never touched

    await writeFile(path.join(steadySrc, 'more.txt'), `written after the abuse ${randomUUID()}\n`);
    const job = await backupSteady();
    expect(job.state, job.error ?? '').toBe('succeeded');
    expect(job.files).toBe(2);
    expect(await recoveryPointsOf(server, steadyDatasource)).toContainEqual(
      expect.objectContaining({ id: job.rpId }),
    );
  });
});
