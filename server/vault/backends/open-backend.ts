import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import type { VaultBackend } from './backend.ts';
import { VaultConfigError } from './errors.ts';
import { LocalBackend } from './local-backend.ts';
import type { BackendLogger, RetryPolicy } from './retry.ts';
import type { S3Credentials } from './s3-backend.ts';

/**
 * Where a vault lives. Secrets are never part of a spec (which may sit in a config file or a
 * database row): the Azure connection string and the S3 keys are read from files named here.
 * docs/vault-backends.md describes the files.
 */
export const backendSpecSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('local'), path: z.string().min(1) }).strict(),
  z
    .object({
      type: z.literal('azure'),
      container: z.string().min(1),
      connectionStringFile: z.string().min(1),
      prefix: z.string().optional(),
    })
    .strict(),
  z
    .object({
      type: z.literal('s3'),
      endpoint: z.string().min(1),
      bucket: z.string().min(1),
      region: z.string().min(1).optional(),
      credentialsFile: z.string().min(1),
      prefix: z.string().optional(),
      forcePathStyle: z.boolean().optional(),
    })
    .strict(),
]);

export type BackendSpec = z.infer<typeof backendSpecSchema>;

export interface OpenBackendOptions {
  /** Create the container/bucket (or the local layout) if missing. */
  create?: boolean;
  log?: BackendLogger;
  /** Remote backends only. */
  retry?: Partial<RetryPolicy>;
  /** Remote backends only: objects per list request. */
  listPageSize?: number;
  /** Remote backends only: time for one attempt (plus 10 ms per KB transferred). */
  timeoutMs?: number;
}

export async function openBackend(spec: BackendSpec, opts: OpenBackendOptions = {}): Promise<VaultBackend> {
  const parsed = backendSpecSchema.safeParse(spec);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new VaultConfigError(
      `invalid vault backend spec: ${issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid'}`,
    );
  }
  const s = parsed.data;
  const common = {
    retry: opts.retry,
    listPageSize: opts.listPageSize,
    timeoutMs: opts.timeoutMs,
    log: opts.log,
  };
  switch (s.type) {
    case 'local': {
      const backend = new LocalBackend(s.path);
      if (opts.create) await backend.createLayout();
      return backend;
    }
    case 'azure': {
      const connectionString = parseConnectionString(
        await readSecretFile(s.connectionStringFile, 'Azure connection string'),
        s.connectionStringFile,
      );
      // Cloud SDKs are loaded only by a server that uses them (they are large).
      const { AzureBackend } = await import('./azure-backend.ts');
      const backend = new AzureBackend({
        connectionString,
        container: s.container,
        prefix: s.prefix,
        ...common,
      });
      if (opts.create) await backend.create();
      return backend;
    }
    case 's3': {
      const credentials = parseS3Credentials(
        await readSecretFile(s.credentialsFile, 'S3 credentials'),
        s.credentialsFile,
      );
      const { S3Backend } = await import('./s3-backend.ts');
      const backend = new S3Backend({
        endpoint: s.endpoint,
        bucket: s.bucket,
        region: s.region,
        credentials,
        prefix: s.prefix,
        forcePathStyle: s.forcePathStyle,
        ...common,
      });
      if (opts.create) await backend.create();
      return backend;
    }
  }
}

const MAX_SECRET_FILE = 64 * 1024;

/** A secret file's text. Errors name the file and what is wrong, never what it holds. */
export async function readSecretFile(file: string, what: string): Promise<string> {
  let buf: Buffer;
  try {
    buf = await readFile(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'does not exist'
        : code === 'EACCES' || code === 'EPERM'
          ? 'is not readable (permission denied)'
          : code === 'EISDIR'
            ? 'is a folder'
            : `cannot be read (${code ?? 'error'})`;
    throw new VaultConfigError(`${what} file ${file} ${why}`);
  }
  if (buf.length > MAX_SECRET_FILE) throw new VaultConfigError(`${what} file ${file} is too large to be one`);
  const text = buf.toString('utf8').replace(/^\uFEFF/, '');
  if (text.trim() === '') throw new VaultConfigError(`${what} file ${file} is empty`);
  return text;
}

/**
 * An Azure Storage connection string, alone in its file (surrounding blank lines and quotes
 * allowed). It must name an account and a key, or carry a SAS with a blob endpoint, or be
 * `UseDevelopmentStorage=true`.
 */
export function parseConnectionString(text: string, file: string): string {
  const cs = unquote(text.trim());
  const bad = (why: string) =>
    new VaultConfigError(`Azure connection string file ${file}: ${why} (see docs/vault-backends.md)`);
  if (/[\r\n]/.test(cs)) throw bad('expected the connection string alone on one line');
  const keys = new Map<string, string>();
  for (const part of cs.split(';')) {
    if (part.trim() === '') continue;
    const eq = part.indexOf('=');
    if (eq <= 0) throw bad('not a connection string (expected Name=value pairs separated by ";")');
    keys.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  if (keys.get('usedevelopmentstorage')?.toLowerCase() === 'true') return cs;
  const hasKey = !!keys.get('accountname') && !!keys.get('accountkey');
  const hasSas = !!keys.get('sharedaccesssignature') && !!keys.get('blobendpoint');
  if (!hasKey && !hasSas) {
    throw bad('needs AccountName and AccountKey, or BlobEndpoint and SharedAccessSignature');
  }
  return cs;
}

const S3_LINE_KEYS: Record<string, keyof S3Credentials> = {
  aws_access_key_id: 'accessKeyId',
  aws_secret_access_key: 'secretAccessKey',
  aws_session_token: 'sessionToken',
};

/**
 * S3 credentials, in either form:
 *
 *   {"accessKeyId": "...", "secretAccessKey": "...", "sessionToken": "..."}   (JSON; sessionToken optional)
 *
 *   AWS_ACCESS_KEY_ID=...                                                     (lines; `export ` allowed,
 *   AWS_SECRET_ACCESS_KEY=...                                                  # comments, quotes, and the
 *   AWS_SESSION_TOKEN=...                                                      [default] header of
 *                                                                               ~/.aws/credentials)
 */
export function parseS3Credentials(text: string, file: string): S3Credentials {
  const bad = (why: string) =>
    new VaultConfigError(`S3 credentials file ${file}: ${why} (see docs/vault-backends.md)`);
  const out: Partial<S3Credentials> = {};
  const trimmed = text.trim();
  if (trimmed.startsWith('{')) {
    let json: unknown;
    try {
      json = JSON.parse(trimmed);
    } catch {
      // JSON.parse's message quotes the text: say only that it is not JSON.
      throw bad('not valid JSON');
    }
    const obj = json as Record<string, unknown>;
    for (const [field, names] of [
      ['accessKeyId', ['accessKeyId', 'AccessKeyId']],
      ['secretAccessKey', ['secretAccessKey', 'SecretAccessKey']],
      ['sessionToken', ['sessionToken', 'SessionToken']],
    ] as const) {
      for (const name of names) {
        const v = obj[name];
        if (v === undefined) continue;
        if (typeof v !== 'string') throw bad(`${name} must be a string`);
        out[field] = v.trim();
      }
    }
  } else {
    const lines = text.split(/\r?\n/);
    let sections = 0;
    for (const [i, raw] of lines.entries()) {
      const line = raw.trim();
      if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
      if (/^\[[^\]]*\]$/.test(line)) {
        if (++sections > 1) throw bad('holds more than one profile; keep only the one to use');
        continue;
      }
      const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
      if (!m) throw bad(`line ${i + 1} is not NAME=value`);
      const name = m[1]!;
      const field = S3_LINE_KEYS[name.toLowerCase()];
      if (!field) {
        // Other settings of ~/.aws/credentials or an env file are let be; only the key names count.
        if (/^(region|output|aws_default_region|aws_region)$/i.test(name)) continue;
        throw bad(`unknown setting ${name} on line ${i + 1}`);
      }
      if (out[field] !== undefined) throw bad(`${name} is set twice`);
      out[field] = unquote(m[2]!.trim());
    }
  }
  if (!out.accessKeyId) throw bad('no access key id (AWS_ACCESS_KEY_ID or "accessKeyId")');
  if (!out.secretAccessKey) throw bad('no secret access key (AWS_SECRET_ACCESS_KEY or "secretAccessKey")');
  return {
    accessKeyId: out.accessKeyId,
    secretAccessKey: out.secretAccessKey,
    ...(out.sessionToken ? { sessionToken: out.sessionToken } : {}),
  };
}

function unquote(s: string): string {
  if (s.length >= 2 && (s[0] === '"' || s[0] === "'") && s.at(-1) === s[0]) return s.slice(1, -1);
  return s;
}
