'use strict';
/*
 * Runs s3rver (npm `s3rver` 3.7.x) for the tests, with one fix so that it keeps the promise
 * every real S3 keeps and the vault relies on: a PutObject is atomic. s3rver itself streams
 * the body straight into the object's file, so a reader sees a growing object while the
 * upload runs, and a connection that drops mid-body leaves a truncated object behind. Here
 * PutObject writes a temp file (a name s3rver's listing ignores), checks the length against
 * Content-Length and the MD5 against Content-MD5 (IncompleteBody / BadDigest, as S3 answers),
 * and renames it into place only then.
 *
 *   node --openssl-legacy-provider s3rver-main.cjs DIR PORT
 *
 * (--openssl-legacy-provider: s3rver encrypts ListObjectsV2 continuation tokens with DES.)
 */
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { Transform } = require('node:stream');
const { pipeline } = require('node:stream/promises');
const S3rver = require('s3rver');
const FilesystemStore = require('s3rver/lib/stores/filesystem');
const S3Error = require('s3rver/lib/models/error');

FilesystemStore.prototype.putObject = async function putObject(object) {
  const objectPath = this.getResourcePath(object.bucket, object.key, 'object');
  await fs.promises.mkdir(path.dirname(objectPath), { recursive: true });
  const tmp = `${objectPath}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.partial`;
  const md5 = crypto.createHash('md5');
  let size = 0;
  try {
    if (Buffer.isBuffer(object.content)) {
      md5.update(object.content);
      size = object.content.length;
      await fs.promises.writeFile(tmp, object.content);
    } else {
      const count = new Transform({
        transform(chunk, _enc, cb) {
          md5.update(chunk);
          size += chunk.length;
          cb(null, chunk);
        },
      });
      // pipeline rejects when the request is aborted part-way (the socket closed early).
      await pipeline(object.content, count, fs.createWriteStream(tmp));
    }
    const expected = object.size;
    if (Number.isFinite(expected) && size !== expected) {
      throw new S3Error(
        'IncompleteBody',
        'You did not provide the number of bytes specified by the Content-Length',
      );
    }
    const contentMd5 = object.content?.headers?.['content-md5'];
    if (contentMd5 && contentMd5 !== md5.copy().digest('base64')) {
      throw new S3Error('BadDigest', 'The Content-MD5 you specified did not match what we received.');
    }
    await fs.promises.rename(tmp, objectPath);
  } catch (err) {
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
  const hex = md5.digest('hex');
  await this.putMetadata(object.bucket, object.key, object.metadata, hex);
  return { size, md5: hex };
};

const [directory, port] = process.argv.slice(2);
if (!directory || !port) {
  console.error('usage: s3rver-main.cjs DIR PORT');
  process.exit(2);
}
const server = new S3rver({
  directory,
  address: '127.0.0.1',
  port: Number(port),
  silent: true,
  vhostBuckets: false,
});
server.run((err) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
