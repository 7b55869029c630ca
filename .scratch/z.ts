import { randomBytes, createHash } from 'node:crypto';
import { compress, decompress } from 'zstd-napi';
const b = randomBytes(1 << 20);
for (const lvl of [1, 3, -1]) { const t = performance.now(); for (let i = 0; i < 200; i++) compress(b, { compressionLevel: lvl }); console.log('random L', lvl, (200 / ((performance.now() - t) / 1000)).toFixed(0), 'MB/s'); }
const txt = Buffer.from(Array.from({length: 40000}, (_, i) => `line ${i} some log text user=${i%97} action=${i%13}\n`).join('')).subarray(0, 1<<20);
const z = compress(txt, { compressionLevel: 1 });
let t = performance.now(); for (let i = 0; i < 200; i++) decompress(z); console.log('decompress MB/s', (200 / ((performance.now() - t) / 1000)).toFixed(0));
t = performance.now(); for (let i = 0; i < 200; i++) Buffer.concat([b, b]); console.log('concat 2MiB/s', (400 / ((performance.now() - t) / 1000)).toFixed(0));
