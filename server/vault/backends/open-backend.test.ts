import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AzureBackend } from './azure-backend.ts';
import { VaultConfigError } from './errors.ts';
import { type BackendSpec, openBackend, parseConnectionString, parseS3Credentials } from './open-backend.ts';

/* Secret files and specs: parsed in both documented forms, and refused with messages that name
 * the file and the problem but never the secret. (Opening against the emulators: backends.test.ts.) */

const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
const ACCOUNT_KEY = 'Zm9vYmFyYmF6cXV4c2VjcmV0a2V5MTIzNDU2Nzg5MA==';
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'holdfast-open-backend-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function file(name: string, text: string): Promise<string> {
  const p = path.join(dir, name);
  await writeFile(p, text, { mode: 0o600 });
  return p;
}

async function configError(p: Promise<unknown>): Promise<VaultConfigError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(VaultConfigError);
  const msg = (err as Error).message;
  expect(msg).not.toContain(SECRET);
  expect(msg).not.toContain(ACCOUNT_KEY);
  return err as VaultConfigError;
}

describe('S3 credentials file', () => {
  it('reads JSON', () => {
    expect(parseS3Credentials(JSON.stringify({ accessKeyId: 'AKID', secretAccessKey: SECRET }), 'f')).toEqual(
      {
        accessKeyId: 'AKID',
        secretAccessKey: SECRET,
      },
    );
    expect(
      parseS3Credentials(
        JSON.stringify({ AccessKeyId: 'AKID', SecretAccessKey: SECRET, SessionToken: 'tok' }),
        'f',
      ),
    ).toEqual({ accessKeyId: 'AKID', secretAccessKey: SECRET, sessionToken: 'tok' });
  });

  it('reads AWS_* lines, env-file style and ~/.aws/credentials style', () => {
    const env = `# vault\nexport AWS_ACCESS_KEY_ID="AKID"\nAWS_SECRET_ACCESS_KEY='${SECRET}'\r\nAWS_REGION=eu-west-1\n`;
    expect(parseS3Credentials(env, 'f')).toEqual({ accessKeyId: 'AKID', secretAccessKey: SECRET });
    const ini = `[default]\naws_access_key_id = AKID\naws_secret_access_key = ${SECRET}\naws_session_token = tok\n`;
    expect(parseS3Credentials(ini, 'f')).toEqual({
      accessKeyId: 'AKID',
      secretAccessKey: SECRET,
      sessionToken: 'tok',
    });
  });

  it('refuses incomplete or malformed files without quoting them', async () => {
    const cases: [string, RegExp][] = [
      [`{"accessKeyId": "AKID", "secretAccessKey": "${SECRET}"`, /not valid JSON/],
      [`{"accessKeyId": "AKID"}`, /no secret access key/],
      [`{"accessKeyId": "AKID", "secretAccessKey": 42}`, /secretAccessKey must be a string/],
      [`AWS_SECRET_ACCESS_KEY=${SECRET}\n`, /no access key id/],
      [`AWS_ACCESS_KEY_ID=AKID\n${SECRET}\n`, /line 2 is not NAME=value/],
      [`AWS_ACCESS_KEY_ID=AKID\nAWS_SECRET_KEY=${SECRET}\n`, /unknown setting AWS_SECRET_KEY on line 2/],
      [`AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=${SECRET}\nAWS_SECRET_ACCESS_KEY=${SECRET}`, /set twice/],
      [`[a]\naws_access_key_id=A\n[b]\naws_secret_access_key=${SECRET}`, /more than one profile/],
    ];
    for (const [text, why] of cases) {
      const err = await configError(
        Promise.resolve().then(() => parseS3Credentials(text, '/etc/holdfast/s3')),
      );
      expect(err.message).toMatch(why);
      expect(err.message).toContain('/etc/holdfast/s3');
    }
  });
});

describe('Azure connection string file', () => {
  const good = `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${ACCOUNT_KEY};EndpointSuffix=core.windows.net`;

  it('accepts account-key, SAS and development-storage strings, quoted or not', () => {
    expect(parseConnectionString(`\n"${good}"\n`, 'f')).toBe(good);
    const sas =
      'BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=sv=2022-11-02&sig=abc';
    expect(parseConnectionString(sas, 'f')).toBe(sas);
    expect(parseConnectionString('UseDevelopmentStorage=true', 'f')).toBe('UseDevelopmentStorage=true');
  });

  it('refuses strings without credentials, or with extra lines, without quoting them', async () => {
    const cases: [string, RegExp][] = [
      ['DefaultEndpointsProtocol=https;AccountName=acct', /needs AccountName and AccountKey/],
      [`AccountKey=${ACCOUNT_KEY}`, /needs AccountName and AccountKey/],
      [`${good}\n${good}`, /alone on one line/],
      [ACCOUNT_KEY.replace(/=/g, ''), /not a connection string/],
    ];
    for (const [text, why] of cases) {
      const err = await configError(
        Promise.resolve().then(() => parseConnectionString(text, '/etc/holdfast/az')),
      );
      expect(err.message).toMatch(why);
    }
  });

  it('the backend itself refuses a string the SDK cannot use, without quoting it', async () => {
    await configError(
      Promise.resolve().then(
        () =>
          new AzureBackend({
            connectionString: `AccountName=a;AccountKey=${ACCOUNT_KEY}`,
            container: 'vault',
          }),
      ),
    );
    await configError(
      Promise.resolve().then(
        () => new AzureBackend({ connectionString: `UseDevelopmentStorage=true`, container: 'Bad_Name' }),
      ),
    );
  });
});

describe('openBackend', () => {
  it('names unreadable secret files and what is wrong with them', async () => {
    const missing = path.join(dir, 'nope');
    let err = await configError(
      openBackend({ type: 's3', endpoint: 'http://127.0.0.1:1', bucket: 'vault', credentialsFile: missing }),
    );
    expect(err.message).toBe(`S3 credentials file ${missing} does not exist`);

    const empty = await file('empty', '\n\n');
    err = await configError(openBackend({ type: 'azure', container: 'vault', connectionStringFile: empty }));
    expect(err.message).toBe(`Azure connection string file ${empty} is empty`);

    const folder = path.join(dir, 'a-folder');
    await mkdir(folder);
    err = await configError(openBackend({ type: 'azure', container: 'vault', connectionStringFile: folder }));
    expect(err.message).toMatch(/is a folder/);

    const broken = await file('broken.json', `{"accessKeyId":"AKID","secretAccessKey":"${SECRET}",}`);
    err = await configError(
      openBackend({ type: 's3', endpoint: 'http://127.0.0.1:1', bucket: 'vault', credentialsFile: broken }),
    );
    expect(err.message).toMatch(/not valid JSON/);

    if (process.getuid?.() !== 0) {
      const locked = await file('locked', `AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=${SECRET}\n`);
      await chmod(locked, 0o000);
      err = await configError(
        openBackend({ type: 's3', endpoint: 'http://127.0.0.1:1', bucket: 'vault', credentialsFile: locked }),
      );
      expect(err.message).toMatch(/not readable/);
    }
  });

  it('refuses invalid specs and endpoints', async () => {
    const creds = await file('creds', `AWS_ACCESS_KEY_ID=A\nAWS_SECRET_ACCESS_KEY=${SECRET}\n`);
    await expect(openBackend({ type: 'ftp' } as unknown as BackendSpec)).rejects.toThrow(
      /invalid vault backend spec/,
    );
    await expect(
      openBackend({ type: 's3', bucket: 'vault', credentialsFile: creds } as unknown as BackendSpec),
    ).rejects.toThrow(/endpoint/);
    await expect(
      openBackend({ type: 's3', endpoint: 'not a url', bucket: 'vault', credentialsFile: creds }),
    ).rejects.toThrow(/invalid S3 endpoint URL/);
    await configError(
      openBackend({
        type: 's3',
        endpoint: `http://A:${SECRET}@127.0.0.1:1`,
        bucket: 'vault',
        credentialsFile: creds,
      }),
    );
    await expect(
      openBackend({
        type: 's3',
        endpoint: 'http://127.0.0.1:1',
        bucket: 'vault',
        credentialsFile: creds,
        prefix: '../x',
      }),
    ).rejects.toThrow(/invalid vault prefix/);
  });

  it('opens without touching the network unless asked to create', async () => {
    const creds = await file('creds2', JSON.stringify({ accessKeyId: 'AKID', secretAccessKey: SECRET }));
    const b = await openBackend({
      type: 's3',
      endpoint: 'http://127.0.0.1:1',
      bucket: 'vault',
      region: 'eu-central-1',
      credentialsFile: creds,
      prefix: '/team/a/',
    });
    expect(b.name).toBe('s3:vault/team/a');
    expect(b.name).not.toContain(SECRET);
  });
});
