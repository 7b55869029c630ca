/*
 * Test helper process for the local backend's "save broken off" conformance test: loads the
 * bytes to save from a file, says "ready", waits for "go" on stdin, saves them with
 * LocalBackend and says "saved". The test kills it (SIGKILL) in the middle of the write.
 *
 *   node --import tsx conformance-save-child.ts ROOT PATH DATAFILE
 */
import { readFile } from 'node:fs/promises';
import { LocalBackend } from './local-backend.ts';

const [root, path, dataFile] = process.argv.slice(2);
if (!root || !path || !dataFile) throw new Error('usage: conformance-save-child.ts ROOT PATH DATAFILE');
const data = await readFile(dataFile);
const backend = new LocalBackend(root);
process.stdout.write('ready\n');
process.stdin.once('data', async () => {
  await backend.save(path, data);
  process.stdout.write('saved\n');
  process.exit(0);
});
