'use strict';
// The script every thread of a worker pool runs (lib/worker-pool.ts): plain JavaScript, so a
// thread loads no TypeScript loader. It evaluates the bundled worker module it is given and
// hands its default export to piscina. Packages resolve from the worker file's own folder.
const { createRequire } = require('node:module');
const path = require('node:path');
const vm = require('node:vm');
const { workerData } = require('piscina');

const { file, code } = workerData.holdfastWorker;
const mod = { exports: {} };
const evaluate = vm.compileFunction(code, ['exports', 'require', 'module', '__filename', '__dirname'], {
  filename: `${file} (bundled)`,
});
evaluate(mod.exports, createRequire(file), mod, file, path.dirname(file));
const handler = mod.exports.default;
if (typeof handler !== 'function') throw new Error(`${file} has no default export function`);
module.exports = handler;
