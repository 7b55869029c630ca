#!/usr/bin/env node
// The one entry point for server, agent and admin CLI.
//
// The TypeScript sources run as bundled ES modules (esbuild, which tsx brings; packages stay
// external), kept in node_modules/.cache/holdfast and rebuilt when a source file changes. A
// long-running server or agent then carries no TypeScript loader: under tsx every process keeps
// a hooks thread and an esbuild process, ~45 MiB together. Where the cache cannot be written,
// the sources run through tsx as before.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const entry = path.join(root, 'cli', 'main.ts');
const cacheDir = path.join(root, 'node_modules', '.cache', 'holdfast');
// `current.json` names the build in use and records the size and mtime of every file it was
// built from; builds are folders named by their content's hash.
const currentFile = path.join(cacheDir, 'current.json');
const KEEP_BUILDS = 4;
/** Leftovers of a build that died midway are removed once this old. */
const STALE_MS = 10 * 60_000;

let main;
try {
  main = cachedBuild() ?? (await build());
} catch {
  main = undefined;
}
if (main === undefined) {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../cli/main.ts');
} else {
  process.setSourceMapsEnabled(true);
  await import(pathToFileURL(main).href);
}

/** The entry of the cached build, if it was built from the files as they are now. */
function cachedBuild() {
  let current;
  try {
    current = JSON.parse(fs.readFileSync(currentFile, 'utf8'));
  } catch {
    return undefined;
  }
  const fresh = Object.entries(current.inputs).every(
    ([file, recorded]) => recorded === stamp(path.join(root, file)),
  );
  const entryFile = path.join(cacheDir, current.build, 'main.mjs');
  return fresh && fs.existsSync(entryFile) ? entryFile : undefined;
}

function stamp(file) {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  return st === undefined ? 'missing' : `${st.size}:${st.mtimeMs}`;
}

/**
 * Bundles the sources into a new build folder and makes it current. Code that the sources import
 * lazily (import()) goes into chunks of its own, so a command loads only the packages it uses.
 * Processes may build at the same time: folders and the pointer are renamed into place.
 */
async function build() {
  // esbuild as tsx (a runtime dependency) resolves it.
  const builder = createRequire(createRequire(import.meta.url).resolve('tsx'))('esbuild');
  const self = fileURLToPath(import.meta.url);
  const inputs = { [path.relative(root, self)]: stamp(self) };
  const outdir = path.join(cacheDir, 'out');
  const result = await builder.build({
    entryPoints: [entry],
    bundle: true,
    splitting: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    packages: 'external',
    sourcemap: 'inline',
    sourcesContent: false,
    outdir,
    outExtension: { '.js': '.mjs' },
    write: false,
    logLevel: 'silent',
    plugins: [
      {
        // Each file keeps its own import.meta.url (worker files, migrations are found from it).
        name: 'holdfast-file-urls',
        setup(b) {
          b.onLoad({ filter: /\.ts$/ }, async (args) => {
            inputs[path.relative(root, args.path)] = stamp(args.path);
            const contents = await fs.promises.readFile(args.path, 'utf8');
            const url = JSON.stringify(pathToFileURL(args.path).href);
            return { contents: contents.replaceAll('import.meta.url', url), loader: 'ts' };
          });
        },
      },
    ],
  });
  await builder.stop();

  const hash = createHash('sha256');
  for (const f of result.outputFiles) hash.update(`${path.relative(outdir, f.path)}\0${f.text}\0`);
  const name = hash.digest('hex').slice(0, 16);
  const dir = path.join(cacheDir, name);
  if (!fs.existsSync(dir)) {
    const tmp = path.join(cacheDir, `tmp-${process.pid}`);
    fs.rmSync(tmp, { recursive: true, force: true });
    for (const f of result.outputFiles) {
      const target = path.join(tmp, path.relative(outdir, f.path));
      fs.mkdirSync(path.dirname(target), { recursive: true });
      writeDurably(target, f.text);
    }
    syncDir(tmp);
    try {
      fs.renameSync(tmp, dir);
    } catch (err) {
      fs.rmSync(tmp, { recursive: true, force: true });
      if (!fs.existsSync(dir)) throw err;
    }
  }
  // Durable before it is named current: after a crash a build is whole or not used.
  const tmpCurrent = path.join(cacheDir, `tmp-${process.pid}.json`);
  writeDurably(tmpCurrent, JSON.stringify({ build: name, inputs }));
  fs.renameSync(tmpCurrent, currentFile);
  syncDir(cacheDir);
  try {
    pruneBuilds(name);
  } catch {
    // Another process may be pruning at the same time; the next build prunes again.
  }
  return path.join(dir, 'main.mjs');
}

// lib/durable-fs.ts does this for the sources; this file runs before any of them can be loaded.
function writeDurably(file, text) {
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeFileSync(fd, text);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function syncDir(dir) {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Removes all but the newest builds (a process still running an old one may load its chunks)
 * and what builds that died midway left behind.
 */
function pruneBuilds(current) {
  const entries = fs.readdirSync(cacheDir, { withFileTypes: true }).map((d) => {
    const file = path.join(cacheDir, d.name);
    return {
      name: d.name,
      file,
      isBuild: d.isDirectory() && /^[0-9a-f]{16}$/.test(d.name),
      mtime: fs.statSync(file).mtimeMs,
    };
  });
  const builds = entries.filter((e) => e.isBuild && e.name !== current).sort((a, b) => b.mtime - a.mtime);
  const stale = entries.filter((e) => e.name.startsWith('tmp-') && Date.now() - e.mtime > STALE_MS);
  for (const old of [...builds.slice(KEEP_BUILDS - 1), ...stale])
    fs.rmSync(old.file, { recursive: true, force: true });
}
