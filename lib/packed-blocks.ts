/**
 * Many blocks in one ArrayBuffer, for worker pools: one copy in, one transfer (a move, not
 * a copy) to the worker, instead of a structured clone per block. Layout: the blocks' bytes
 * back to back; `lengths` says where each ends.
 */
export interface PackedBlocks {
  buffer: ArrayBuffer;
  lengths: number[];
}

export function packBlocks(blocks: Uint8Array[]): PackedBlocks {
  const total = blocks.reduce((n, b) => n + b.length, 0);
  const buffer = new ArrayBuffer(total);
  const view = new Uint8Array(buffer);
  let at = 0;
  for (const b of blocks) {
    view.set(b, at);
    at += b.length;
  }
  return { buffer, lengths: blocks.map((b) => b.length) };
}

export function unpackBlocks(packed: PackedBlocks): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const len of packed.lengths) {
    out.push(Buffer.from(packed.buffer, at, len));
    at += len;
  }
  return out;
}
