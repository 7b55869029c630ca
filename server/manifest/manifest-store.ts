import { type FileHandle, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Entry } from '../../protocol/entry.ts';
import {
  clearTempDir,
  errnoCode,
  fsyncDir,
  isDiskFull,
  removeQuietly,
  tempName,
} from '../../lib/durable-fs.ts';
import { decodeRecords, encodeRecord, MANIFEST_MAGIC, ManifestError } from './manifest-format.ts';

export { ManifestError, type ManifestErrorCode } from './manifest-format.ts';

/**
 * Manifests of recovery points, one file per RP: `<dir>/manifests/<rpId>.manifest`, written
 * through `<dir>/manifests/tmp`. A manifest only gets its final name when commit() has made
 * it durable, so "the file exists" means "the list is complete". The RP row in the database
 * is inserted after that (server/backup), which is what makes an RP complete or absent; a
 * manifest whose row never arrived (a crash between the two) is an orphan for GC to remove.
 */
export class ManifestStore {
  private constructor(
    readonly dir: string,
    private readonly tmpDir: string,
  ) {}

  /** `dir` is the folder that holds `manifests/` (the data dir). */
  static async open(dir: string): Promise<ManifestStore> {
    const manifests = path.join(path.resolve(dir), 'manifests');
    const tmpDir = path.join(manifests, 'tmp');
    await mkdir(tmpDir, { recursive: true });
    await clearTempDir(tmpDir);
    return new ManifestStore(manifests, tmpDir);
  }

  async createWriter(rpId: string): Promise<ManifestWriter> {
    const target = this.pathOf(rpId);
    if (await this.exists(rpId)) {
      throw new ManifestError(
        'MANIFEST_EXISTS',
        `manifest ${target} already exists; recovery point ids are never reused`,
      );
    }
    const tmp = path.join(this.tmpDir, tempName(rpId));
    let fh: FileHandle;
    try {
      fh = await open(tmp, 'wx', 0o640);
    } catch (err) {
      throw ioError(`creating manifest ${target}`, err);
    }
    try {
      await fh.writeFile(MANIFEST_MAGIC);
    } catch (err) {
      await fh.close().catch(() => {});
      await removeQuietly(tmp);
      throw ioError(`creating manifest ${target}`, err);
    }
    return new FileManifestWriter(fh, tmp, target, this.dir);
  }

  /** The batches of a committed manifest, in append order, every entry validated. */
  async *read(rpId: string): AsyncGenerator<Entry[]> {
    const file = this.pathOf(rpId);
    let fh: FileHandle;
    try {
      fh = await open(file, 'r');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') {
        throw new ManifestError('MANIFEST_MISSING', `manifest ${file} of recovery point ${rpId} is missing`, {
          cause: err,
        });
      }
      throw ioError(`opening manifest ${file}`, err);
    }
    try {
      yield* decodeRecords(fh, file);
    } finally {
      await fh.close();
    }
  }

  /** Idempotent: removing a manifest that is not there is not an error (prune may retry). */
  async remove(rpId: string): Promise<void> {
    const file = this.pathOf(rpId);
    try {
      await rm(file, { force: true });
      await fsyncDir(this.dir);
    } catch (err) {
      throw ioError(`removing manifest ${file}`, err);
    }
  }

  async exists(rpId: string): Promise<boolean> {
    const file = this.pathOf(rpId);
    try {
      await stat(file);
      return true;
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return false;
      throw ioError(`checking manifest ${file}`, err);
    }
  }

  /** Validating here is what keeps an id from ever naming a path outside manifests/. */
  private pathOf(rpId: string): string {
    if (typeof rpId !== 'string' || !/^[A-Za-z0-9-]{1,100}$/.test(rpId)) {
      throw new ManifestError(
        'MANIFEST_BAD_ID',
        `not a recovery point id (1-100 of A-Z a-z 0-9 -): ${JSON.stringify(String(rpId).slice(0, 120))}`,
      );
    }
    return path.join(this.dir, `${rpId}.manifest`);
  }
}

export interface ManifestWriter {
  /** Streams a batch to the temp file; appends are written in call order. */
  append(entries: Entry[]): Promise<void>;
  /** fsync, rename into place, fsync the folder: when it returns the manifest is durable. */
  commit(): Promise<void>;
  /** Removes the temp file. No-op after commit; safe to call twice. */
  discard(): Promise<void>;
  readonly entryCount: number;
}

type WriterState = 'open' | 'committing' | 'committed' | 'discarded';

class FileManifestWriter implements ManifestWriter {
  private state: WriterState = 'open';
  private count = 0;
  /** Appends run one after another; this is the end of the chain (never rejects). */
  private tail: Promise<void> = Promise.resolve();
  /** Set when a write failed: the temp file is then unusable and only discard() remains. */
  private failure: Error | undefined;
  private committing: Promise<void> | undefined;
  private closed = false;
  private renamed = false;

  constructor(
    private readonly fh: FileHandle,
    private readonly tmp: string,
    private readonly target: string,
    private readonly folder: string,
  ) {}

  get entryCount(): number {
    return this.count;
  }

  append(entries: Entry[]): Promise<void> {
    if (this.state !== 'open') return Promise.reject(this.stateError('append to'));
    const run = this.tail.then(async () => {
      if (this.failure) throw this.failure;
      if (entries.length === 0) return; // an empty record would carry nothing
      const record = encodeRecord(entries);
      try {
        await this.fh.writeFile(record);
      } catch (err) {
        this.failure = ioError(`writing manifest ${this.target}`, err);
        throw this.failure;
      }
      this.count += entries.length;
    });
    this.tail = run.catch(() => {});
    return run;
  }

  commit(): Promise<void> {
    if (this.state === 'committed') return Promise.resolve();
    if (this.state === 'committing' && this.committing) return this.committing;
    if (this.state !== 'open') return Promise.reject(this.stateError('commit'));
    this.state = 'committing';
    this.committing = this.doCommit().then(
      () => {
        this.state = 'committed';
      },
      (err) => {
        this.state = 'open'; // only discard() makes sense now; failure blocks further appends
        this.failure ??= err as Error;
        throw err;
      },
    );
    return this.committing;
  }

  private async doCommit(): Promise<void> {
    await this.tail;
    if (this.failure) throw this.failure;
    try {
      await this.fh.sync();
      this.closed = true;
      await this.fh.close();
      await rename(this.tmp, this.target);
      this.renamed = true;
      await fsyncDir(this.folder);
    } catch (err) {
      throw ioError(`committing manifest ${this.target}`, err);
    }
  }

  async discard(): Promise<void> {
    if (this.committing) await this.committing.catch(() => {});
    if (this.state === 'committed' || this.state === 'discarded') return;
    this.state = 'discarded';
    await this.tail;
    if (!this.closed) {
      this.closed = true;
      await this.fh.close().catch(() => {});
    }
    await removeQuietly(this.tmp);
    // A commit that renamed but could not fsync the folder reported failure: take it back.
    if (this.renamed) await removeQuietly(this.target);
  }

  private stateError(what: string): ManifestError {
    return new ManifestError(
      'MANIFEST_STATE',
      `cannot ${what} manifest ${this.target}: writer is ${this.state}`,
    );
  }
}

function ioError(what: string, err: unknown): ManifestError {
  if (err instanceof ManifestError) return err;
  const cause = err instanceof Error ? err.message : String(err);
  if (isDiskFull(err)) {
    return new ManifestError('STORE_FULL', `${what}: disk full (${errnoCode(err)}); free space and retry`, {
      cause: err,
    });
  }
  return new ManifestError('STORE_IO', `${what} failed: ${cause}`, { cause: err });
}
