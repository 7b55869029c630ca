import { describe, expect, it } from 'vitest';
import { holdfastTags, newSnapshot, parseHoldfastTags, snapshotFromJson } from './snapshot.ts';

const TREE = 'ab'.repeat(32);

describe('snapshots', () => {
  it("builds restic's snapshot JSON in its field order", () => {
    const s = newSnapshot({
      time: Date.UTC(2024, 0, 2, 3, 4, 5, 600),
      tree: TREE,
      paths: ['/srv'],
      hostname: 'web1',
      tags: ['t'],
    });
    expect(Object.keys(s)).toEqual(['time', 'tree', 'paths', 'hostname', 'tags']);
    expect(s.time).toBe('2024-01-02T03:04:05.6Z');
    expect(() => newSnapshot({ time: 0, tree: 'x', paths: ['/'], hostname: 'h' })).toThrow(/tree/);
    expect(() => newSnapshot({ time: 0, tree: TREE, paths: [], hostname: 'h' })).toThrow(/path/);
  });

  it('keeps fields restic adds that Holdfast does not know', () => {
    const s = snapshotFromJson({
      time: 't',
      tree: TREE,
      paths: ['/'],
      summary: { files_new: 3 },
      program_version: 'restic 0.17',
    });
    expect(s.summary).toEqual({ files_new: 3 });
    expect(() => snapshotFromJson({ time: 't' })).toThrow(/no tree/);
  });

  it('tags a recovery point, escaping commas so restic --tag filters still work', () => {
    const tags = holdfastTags({ datasourceId: 'ds-1', group: 'web, eu 100%', recoveryPointId: 'rp-7' });
    expect(tags).toEqual(['holdfast', 'ds:ds-1', 'group:web%2C eu 100%25', 'rp:rp-7']);
    expect(tags.some((t) => t.includes(','))).toBe(false);
    expect(parseHoldfastTags(tags)).toEqual({
      datasourceId: 'ds-1',
      group: 'web, eu 100%',
      recoveryPointId: 'rp-7',
    });
    expect(parseHoldfastTags(['from-restic'])).toBeUndefined();
  });
});
