import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { DirectWriter } from '../../../lib/direct-write.ts';
import { errnoCode, fsyncDir, removeQuietly, tempName } from '../../../lib/durable-fs.ts';
import {
  assertValidVaultPath,
  isValidVaultPath,
  type VaultBackend,
  type VaultFolder,
  VaultNotFoundError,
} from './backend.ts';

/**
 * A vault in a local folder, laid out exactly as restic's local backend lays out a repository,
 * so `restic -r FOLDER` works on it directly.
 *
 * Writes follow the same durable recipe as the chunk store (lib/durable-fs.ts): a temp file
 * beside the target, fsync, rename into place, fsync the folder; large files (packs) are
 * written around the page cache where the file system allows it (lib/direct-write.ts). The
 * temp file's name is not 64 hex characters, so neither restic nor list() ever takes it for a
 * repository file.
 *
 * Modes are restic's defaults: files 0600, folders 0700 (the vault holds only ciphertext, but
 * its key files are what a passphrase guesser would want). Whoever runs `restic` on the folder
 * must be the same user (tests run as root).
 */

const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
const TOP_FOLDERS: VaultFolder[] = ['data', 'index', 'keys', 'locks', 'snapshots'];
const ID_NAME = /^[0-9a-f]{64}$/;

export class LocalBackend implements VaultBackend {
  readonly name: string;
  readonly root: string;
  /** Packs go around the page cache: written once, read rarely (lib/direct-write.ts). */
  private readonly writer = new DirectWriter();

  constructor(root: string) {
    this.root = path.resolve(root);
    this.name = `local:${this.root}`;
  }

  /**
   * Creates restic's full layout (including data/00..ff), as `restic init` does. Called when the
   * config is first saved, so a repository created through any code path looks like one restic
   * made. Idempotent.
   */
  async createLayout(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: DIR_MODE });
    for (const folder of TOP_FOLDERS)
      await mkdir(path.join(this.root, folder), { recursive: true, mode: DIR_MODE });
    for (let i = 0; i < 256; i++) {
      await mkdir(path.join(this.root, 'data', i.toString(16).padStart(2, '0')), {
        recursive: true,
        mode: DIR_MODE,
      });
    }
    await fsyncDir(path.join(this.root, 'data'));
    await fsyncDir(this.root);
  }

  async save(file: string, data: Buffer): Promise<void> {
    assertValidVaultPath(file);
    if (file === 'config') await this.createLayout();
    const target = this.resolve(file);
    const dir = path.dirname(target);
    await mkdir(dir, { recursive: true, mode: DIR_MODE });
    const tmp = path.join(dir, tempName(`.${path.basename(target)}`));
    try {
      await this.writer.writeNew(tmp, data, FILE_MODE);
      await rename(tmp, target);
    } catch (err) {
      await removeQuietly(tmp);
      throw err;
    }
    await fsyncDir(dir);
  }

  async load(file: string, range?: { offset: number; length: number }): Promise<Buffer> {
    assertValidVaultPath(file);
    let fh: Awaited<ReturnType<typeof open>>;
    try {
      fh = await open(this.resolve(file), 'r');
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') throw new VaultNotFoundError(file);
      throw err;
    }
    try {
      if (!range) return await fh.readFile();
      if (
        !Number.isSafeInteger(range.offset) ||
        range.offset < 0 ||
        !Number.isSafeInteger(range.length) ||
        range.length < 0
      ) {
        throw new Error(`invalid range ${range.offset}+${range.length} for ${file}`);
      }
      const buf = Buffer.allocUnsafe(range.length);
      let got = 0;
      while (got < range.length) {
        const { bytesRead } = await fh.read(buf, got, range.length - got, range.offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      if (got !== range.length) {
        throw new Error(`${file} is too short: wanted ${range.length} bytes at ${range.offset}, got ${got}`);
      }
      return buf;
    } finally {
      await fh.close();
    }
  }

  async stat(file: string): Promise<{ size: number } | undefined> {
    assertValidVaultPath(file);
    try {
      const st = await stat(this.resolve(file));
      return { size: st.size };
    } catch (err) {
      if (errnoCode(err) === 'ENOENT') return undefined;
      throw err;
    }
  }

  async *list(prefix: VaultFolder): AsyncIterable<{ path: string; size: number }> {
    if (!TOP_FOLDERS.includes(prefix)) throw new Error(`not a vault folder: ${prefix}`);
    const folders =
      prefix === 'data'
        ? (await readdirOrEmpty(path.join(this.root, 'data')))
            .filter((n) => /^[0-9a-f]{2}$/.test(n))
            .map((n) => `data/${n}`)
        : [prefix];
    for (const folder of folders) {
      for (const name of await readdirOrEmpty(path.join(this.root, folder))) {
        const file = `${folder}/${name}`;
        if (!ID_NAME.test(name) || !isValidVaultPath(file)) continue;
        const size = await this.stat(file);
        // removed between readdir and stat: it is simply no longer there
        if (size) yield { path: file, size: size.size };
      }
    }
  }

  async remove(file: string): Promise<void> {
    assertValidVaultPath(file);
    await rm(this.resolve(file), { force: true });
    await fsyncDir(path.dirname(this.resolve(file))).catch((err) => {
      if (errnoCode(err) !== 'ENOENT') throw err;
    });
  }

  private resolve(file: string): string {
    return path.join(this.root, ...file.split('/'));
  }
}

async function readdirOrEmpty(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return [];
    throw err;
  }
}
