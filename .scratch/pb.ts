import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import { compress } from 'zstd-napi';
import buildPackTask from '/work/main/server/vault/pack-worker.ts';
import { packBlocks } from '/work/main/lib/packed-blocks.ts';
import { masterKeyToJson, newMasterKey } from '/work/main/server/vault/format/crypto.ts';
const root = '/work/main/bench-data/dataset/files';
const files: string[] = [];
const walk = (d: string) => { for (const e of fs.readdirSync(d, { withFileTypes: true })) { const p = path.join(d, e.name); if (e.isDirectory()) walk(p); else files.push(p); } };
walk(root);
const blobs: { data: Buffer; id: string; zstdLength?: number }[] = [];
let total = 0;
for (const f of files) {
  const buf = fs.readFileSync(f);
  for (let o = 0; o < buf.length && total < 400 << 20; o += 1 << 20) {
    const raw = buf.subarray(o, Math.min(buf.length, o + (1 << 20)));
    const id = createHash('sha256').update(raw).digest('hex');
    const z = compress(raw, { compressionLevel: 1 });
    blobs.push(z.length < raw.length ? { data: z, id, zstdLength: raw.length } : { data: Buffer.from(raw), id });
    total += raw.length;
  }
  if (total >= 400 << 20) break;
}
const key = masterKeyToJson(newMasterKey());
let stored = 0; for (const b of blobs) stored += b.data.length;
console.log('blobs', blobs.length, 'raw MiB', total >> 20, 'stored MiB', stored >> 20);
const t0 = performance.now();
let batch: typeof blobs = []; let bytes = 0;
const flush = () => { const packed = packBlocks(batch.map(b => b.data)); buildPackTask({ key, type: 'data', blocks: packed, meta: batch.map(b => ({ id: b.id, ...(b.zstdLength !== undefined && { zstdLength: b.zstdLength }) })) }); batch = []; bytes = 0; };
for (const b of blobs) { batch.push(b); bytes += b.data.length; if (bytes >= 32 << 20) flush(); }
if (batch.length) flush();
const dt = performance.now() - t0;
console.log('ms', dt.toFixed(0), 'stored MB/s', (stored / 1e6 / (dt / 1000)).toFixed(0));
{
  const { decompress } = await import('zstd-napi');
  const { encrypt, masterKeyFromJson } = await import('/work/main/server/vault/format/crypto.ts');
  const k = masterKeyFromJson(key);
  const T: Record<string, number> = { dec: 0, hash: 0, comp: 0, enc: 0, concat: 0, packhash: 0 };
  const tm = (n: string, f: () => any) => { const t = performance.now(); const r = f(); T[n] += performance.now() - t; return r; };
  const parts: Buffer[] = [];
  for (const b of blobs) {
    let payload = b.data;
    if (b.zstdLength !== undefined) { const p = tm('dec', () => decompress(b.data)); tm('hash', () => createHash('sha256').update(p).digest('hex')); }
    else { tm('hash', () => createHash('sha256').update(b.data).digest('hex')); tm('comp', () => compress(b.data, { compressionLevel: 3 })); }
    parts.push(tm('enc', () => encrypt(k, payload)));
  }
  const all = tm('concat', () => Buffer.concat(parts));
  tm('packhash', () => createHash('sha256').update(all).digest('hex'));
  console.log(Object.fromEntries(Object.entries(T).map(([a, v]) => [a, Math.round(v)])));
}
