import { describe, expect, it } from 'vitest';
import { indexFromJson, indexToJson, splitForIndexFiles, VaultIndex } from './index-file.ts';

const id = (c: string) => c.repeat(64);

describe('index files', () => {
  const content = {
    packs: [
      {
        id: id('a'),
        blobs: [
          { id: id('1'), type: 'data' as const, offset: 0, length: 38 },
          { id: id('2'), type: 'data' as const, offset: 38, length: 112, uncompressedLength: 511 },
        ],
      },
    ],
    supersedes: [id('f')],
  };

  it("writes restic's JSON: uncompressed_length only for compressed blobs", () => {
    const json = indexToJson(content) as {
      packs: { blobs: Record<string, unknown>[] }[];
      supersedes: string[];
    };
    expect(json.supersedes).toEqual([id('f')]);
    expect(json.packs[0]!.blobs[0]).toEqual({ id: id('1'), type: 'data', offset: 0, length: 38 });
    expect(json.packs[0]!.blobs[1]).toEqual({
      id: id('2'),
      type: 'data',
      offset: 38,
      length: 112,
      uncompressed_length: 511,
    });
    expect(indexFromJson(JSON.parse(JSON.stringify(json)))).toEqual(content);
    expect(indexToJson({ packs: [] })).toEqual({ packs: [] });
  });

  it("reads restic's oldest format (a bare list of packs) and rejects malformed entries", () => {
    expect(indexFromJson([{ id: id('a'), blobs: [] }])).toEqual({ packs: [{ id: id('a'), blobs: [] }] });
    expect(() => indexFromJson({ packs: [{ id: 'short', blobs: [] }] })).toThrow(/malformed pack/);
    expect(() => indexFromJson({ packs: [{ id: id('a'), blobs: [{ id: id('1'), type: 'x' }] }] })).toThrow(
      /malformed blob/,
    );
    expect(() => indexFromJson({})).toThrow(/no packs/);
  });

  it('splits packs into files of at most N blobs without splitting a pack', () => {
    const pack = (n: number, c: string) => ({
      id: id(c),
      blobs: Array.from({ length: n }, (_, i) => ({
        id: id('1'),
        type: 'data' as const,
        offset: i,
        length: 1,
      })),
    });
    const groups = splitForIndexFiles(
      [pack(3, 'a'), pack(3, 'b'), pack(5, 'c'), pack(1, 'd'), pack(9, 'e'), pack(1, 'f')],
      6,
    );
    // a pack larger than the limit gets a file of its own
    expect(groups.map((g) => g.map((p) => p.id[0]).join(''))).toEqual(['ab', 'cd', 'e', 'f']);
  });

  it('merges files into a map per blob type; the first location seen wins', () => {
    const index = new VaultIndex();
    index.add({ packs: [{ id: id('a'), blobs: [{ id: id('1'), type: 'data', offset: 0, length: 5 }] }] });
    index.add({
      packs: [
        {
          id: id('b'),
          blobs: [
            { id: id('1'), type: 'data', offset: 7, length: 5 },
            { id: id('1'), type: 'tree', offset: 12, length: 5 },
          ],
        },
      ],
    });
    expect(index.get('data', id('1'))?.packId).toBe(id('a'));
    expect(index.get('tree', id('1'))).toMatchObject({ packId: id('b'), offset: 12 });
    expect(index.has('tree', id('2'))).toBe(false);
    expect([...index.packs.keys()]).toEqual([id('a'), id('b')]);
  });
});
