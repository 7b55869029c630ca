import { execFile } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, ROOT, tempDir } from './harness.ts';

/*
 * bin/holdfast.mjs runs the sources as a cached esbuild bundle. Checked on a small project of
 * its own (the entry point copied beside a cli/main.ts that imports a file, lazily another),
 * so the repository's own cache is not touched.
 */

const run = promisify(execFile);
let project: string;
let cache: string;

beforeEach(async () => {
  project = await tempDir('entry');
  cache = path.join(project, 'node_modules', '.cache', 'holdfast');
  await mkdir(path.join(project, 'bin'));
  await mkdir(path.join(project, 'cli'));
  await mkdir(path.join(project, 'node_modules'));
  await writeFile(path.join(project, 'package.json'), '{ "type": "module" }\n');
  await copyFile(BIN, path.join(project, 'bin', 'holdfast.mjs'));
  await symlink(path.join(ROOT, 'node_modules', 'tsx'), path.join(project, 'node_modules', 'tsx'));
  await writeFile(
    path.join(project, 'cli', 'main.ts'),
    [
      "import { word } from './word.ts';",
      "const { where } = await import('./lazy.ts');",
      'const n: number = 2;',
      "console.log([word, n, where].join(' '));",
    ].join('\n'),
  );
  await writeWord('one');
  await writeFile(path.join(project, 'cli', 'lazy.ts'), 'export const where: string = import.meta.url;\n');
});

afterEach(async () => {
  await rm(project, { recursive: true, force: true });
});

function writeWord(word: string): Promise<void> {
  return writeFile(path.join(project, 'cli', 'word.ts'), `export const word: string = '${word}';\n`);
}

async function holdfast(): Promise<string> {
  const { stdout } = await run(process.execPath, [path.join(project, 'bin', 'holdfast.mjs')]);
  return stdout.trim();
}

async function builds(): Promise<string[]> {
  return (await readdir(cache)).filter((name) => /^[0-9a-f]{16}$/.test(name));
}

async function current(): Promise<{ build: string; inputs: Record<string, string> }> {
  return JSON.parse(await readFile(path.join(cache, 'current.json'), 'utf8'));
}

describe('the entry point', () => {
  it('runs a cached bundle in which every file keeps its own import.meta.url', async () => {
    const lazyUrl = pathToFileURL(path.join(project, 'cli', 'lazy.ts')).href;
    expect(await holdfast()).toBe(`one 2 ${lazyUrl}`);
    const first = await current();
    expect(Object.keys(first.inputs).sort()).toEqual([
      path.join('bin', 'holdfast.mjs'),
      path.join('cli', 'lazy.ts'),
      path.join('cli', 'main.ts'),
      path.join('cli', 'word.ts'),
    ]);
    // The lazily imported file is a chunk of its own, loaded only when imported.
    const files = await readdir(path.join(cache, first.build));
    expect(files).toContain('main.mjs');
    expect(files.some((f) => f.startsWith('lazy-'))).toBe(true);

    expect(await holdfast()).toBe(`one 2 ${lazyUrl}`);
    expect(await current()).toEqual(first);
  });

  it('rebuilds when a source changes and keeps only the newest builds and no stale leftovers', async () => {
    expect(await holdfast()).toMatch(/^one /);
    const first = (await current()).build;
    await writeWord('two');
    expect(await holdfast()).toMatch(/^two /);
    expect((await current()).build).not.toBe(first);
    expect(await builds()).toHaveLength(2);

    // Leftovers of builds that died midway: removed once old, kept while one may still be writing.
    const hourAgo = new Date(Date.now() - 3_600_000);
    await mkdir(path.join(cache, 'tmp-999999'));
    await utimes(path.join(cache, 'tmp-999999'), hourAgo, hourAgo);
    await mkdir(path.join(cache, 'tmp-999998'));

    for (const word of ['three', 'four', 'five', 'six']) {
      await writeWord(word);
      expect(await holdfast()).toMatch(new RegExp(`^${word} `));
    }
    const kept = await builds();
    expect(kept).toHaveLength(4);
    expect(kept).toContain((await current()).build);
    const leftovers = (await readdir(cache)).filter((name) => name.startsWith('tmp-'));
    expect(leftovers).toEqual(['tmp-999998']);
  });

  it('runs the sources through tsx when the cache cannot be written', async () => {
    await mkdir(path.join(project, 'node_modules', '.cache'));
    await writeFile(cache, 'not a folder');
    const lazyUrl = pathToFileURL(path.join(project, 'cli', 'lazy.ts')).href;
    expect(await holdfast()).toBe(`one 2 ${lazyUrl}`);
  });
});
