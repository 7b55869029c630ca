import { describe, expect, it } from 'vitest';
import { GoFileMode, goFileMode, posixPermissions } from './file-mode.ts';
import { goQuoteName, goUnquoteName } from './go-quote.ts';
import { formatGoTime, goTimeToMs, parseGoTime } from './go-time.ts';
import { sha256Hex } from './id.ts';
import { pathComponents, wrapInPath } from './path-trees.ts';
import { decodeTree, dirNode, encodeTree, fileNode, symlinkNode } from './tree.ts';

const ID = 'ab'.repeat(32);
const meta = { mode: 0o644, mtime: Date.UTC(2024, 0, 1), uid: 1, gid: 2 };

describe('Go FileMode', () => {
  it('puts type and special bits where Go does', () => {
    expect(goFileMode('dir', 0o755)).toBe(2147484141);
    expect(goFileMode('symlink', 0o777)).toBe(2 ** 27 + 0o777);
    expect(goFileMode('file', 0o100644)).toBe(0o644); // the st_mode type bits are ignored
    expect(goFileMode('file', 0o4755)).toBe(GoFileMode.setuid + 0o755);
    expect(goFileMode('dir', 0o1777)).toBe(GoFileMode.dir + GoFileMode.sticky + 0o777);
    expect(posixPermissions(GoFileMode.dir + GoFileMode.setgid + GoFileMode.sticky + 0o750)).toBe(0o3750);
  });
});

describe('Go time', () => {
  it('formats RFC 3339 with nanoseconds, trailing zeros dropped', () => {
    expect(formatGoTime(new Date(Date.UTC(2024, 4, 1, 10, 0, 0)))).toBe('2024-05-01T10:00:00Z');
    expect(formatGoTime(Date.UTC(2024, 4, 1, 10, 0, 0) + 500)).toBe('2024-05-01T10:00:00.5Z');
    expect(formatGoTime(1_700_000_000_123_456_789n)).toBe('2023-11-14T22:13:20.123456789Z');
    expect(formatGoTime(-1n)).toBe('1969-12-31T23:59:59.999999999Z');
  });

  it('parses any offset and keeps nanoseconds', () => {
    expect(parseGoTime('2015-01-02T18:10:13.48307196+01:00')).toBe(
      BigInt(Date.UTC(2015, 0, 2, 17, 10, 13)) * 1_000_000n + 483_071_960n,
    );
    expect(parseGoTime('0001-01-01T00:00:00Z')).toBe(-62135596800000n * 1_000_000n);
    expect(goTimeToMs('2024-05-01T10:00:00.25Z')).toBe(Date.UTC(2024, 4, 1, 10) + 250);
    expect(() => parseGoTime('yesterday')).toThrow();
  });
});

describe('Go-quoted names', () => {
  it.each([
    ['plain.txt', 'plain.txt'],
    ['ünïcødé ✓', 'ünïcødé ✓'],
    ['a"b', 'a\\"b'],
    ['back\\slash', 'back\\\\slash'],
    ['tab\there\nnl', 'tab\\there\\nnl'],
    ['\x01\x7f', '\\x01\\x7f'],
    ['nbsp\u00a0', 'nbsp\\u00a0'],
  ])('quotes %j as strconv.Quote does', (name, quoted) => {
    expect(goQuoteName(name)).toBe(quoted);
    expect(goUnquoteName(quoted)).toBe(name);
  });

  it('reads octal and byte escapes restic may write, and rejects broken ones', () => {
    expect(goUnquoteName('\\303\\251t\\xc3\\xa9')).toBe('été');
    expect(goUnquoteName('\\U0001F600')).toBe('😀');
    expect(() => goUnquoteName('a\\q')).toThrow();
    expect(() => goUnquoteName('a"b')).toThrow();
  });
});

describe('trees', () => {
  it("serialises nodes in restic's field order, sorted bytewise by name, id = SHA-256 of the JSON", () => {
    const tree = encodeTree([
      fileNode({ ...meta, name: 'b', size: 3, content: [ID] }),
      dirNode({ ...meta, name: 'a', mode: 0o755, subtree: ID }),
      fileNode({ ...meta, name: 'É', size: 0, content: [] }),
      symlinkNode({ ...meta, name: 'Z', mode: 0o777, target: 'b' }),
    ]);
    expect(tree.id).toBe(sha256Hex(tree.bytes));
    expect(tree.bytes.toString().endsWith('}\n')).toBe(true);
    const json = JSON.parse(tree.bytes.toString()) as { nodes: Record<string, unknown>[] };
    expect(json.nodes.map((n) => n.name)).toEqual(['Z', 'a', 'b', 'É']);
    expect(Object.keys(json.nodes[2]!)).toEqual([
      'name',
      'type',
      'mode',
      'mtime',
      'atime',
      'ctime',
      'uid',
      'gid',
      'size',
      'content',
    ]);
    expect(json.nodes[1]).toMatchObject({ type: 'dir', mode: 2147484141, content: null, subtree: ID });
    expect(json.nodes[3]).toMatchObject({ content: [] }); // an empty file: [] — restic's check rejects null
    expect(json.nodes[3]!.size).toBeUndefined();
    expect(json.nodes[0]).toMatchObject({ type: 'symlink', linktarget: 'b', content: null });
    expect(json.nodes[2]!.mtime).toBe('2024-01-01T00:00:00Z');
    expect(decodeTree(tree.bytes).map((n) => n.name)).toEqual(['Z', 'a', 'b', 'É']);
  });

  it('round-trips names that need quoting', () => {
    const tree = encodeTree([fileNode({ ...meta, name: 'we"ird\\\n', size: 0, content: [] })]);
    expect(tree.bytes.toString()).toContain('"name":"we\\\\\\"ird\\\\\\\\\\\\n"');
    expect(decodeTree(tree.bytes)[0]!.name).toBe('we"ird\\\n');
  });

  it('rejects what restic would choke on', () => {
    expect(() => encodeTree([fileNode({ ...meta, name: 'x', size: 1, content: ['nope'] })])).toThrow(
      /not 64 hex/,
    );
    expect(() => encodeTree([fileNode({ ...meta, name: 'a/b', size: 0, content: [] })])).toThrow(
      /invalid node name/,
    );
    expect(() =>
      encodeTree([
        fileNode({ ...meta, name: 'x', size: 0, content: [] }),
        fileNode({ ...meta, name: 'x', size: 0, content: [] }),
      ]),
    ).toThrow(/two nodes/);
    expect(() =>
      encodeTree([{ ...dirNode({ ...meta, name: 'd', subtree: ID }), subtree: undefined }]),
    ).toThrow(/subtree/);
  });

  it('reads an empty directory restic wrote as null nodes, and raw link targets', () => {
    expect(decodeTree(Buffer.from('{"nodes":null}'))).toEqual([]);
    const raw = Buffer.from('ab\xff', 'latin1').toString('base64');
    const [node] = decodeTree(
      Buffer.from(JSON.stringify({ nodes: [{ name: 'l', type: 'symlink', linktarget_raw: raw }] })),
    );
    expect(node!.linktarget).toBe('ab\ufffd');
    expect(node!.content).toBeNull();
  });
});

describe('path trees', () => {
  it('names path components as restic does', () => {
    expect(pathComponents('/srv/www/')).toEqual(['srv', 'www']);
    expect(pathComponents('C:\\Users\\me')).toEqual(['C', 'Users', 'me']);
    expect(pathComponents('/')).toEqual([]);
    expect(() => pathComponents('relative/path')).toThrow(/absolute/);
    expect(() => pathComponents('/a/../b')).toThrow(/\.\./);
  });

  it('wraps the top node in one tree per parent folder, root last', () => {
    const top = fileNode({ ...meta, name: 'ignored', size: 0, content: [] });
    const { rootTreeId, trees } = wrapInPath('/dev/disk/vda', top, { mtime: 0 });
    expect(trees).toHaveLength(3);
    expect(trees[2]!.id).toBe(rootTreeId);
    const root = decodeTree(trees[2]!.bytes);
    expect(root).toMatchObject([{ name: 'dev', type: 'dir', subtree: trees[1]!.id }]);
    expect(decodeTree(trees[1]!.bytes)).toMatchObject([{ name: 'disk', subtree: trees[0]!.id }]);
    expect(decodeTree(trees[0]!.bytes)).toMatchObject([{ name: 'vda', type: 'file' }]);
    expect(wrapInPath('/', dirNode({ ...meta, name: 'x', subtree: ID }), { mtime: 0 })).toEqual({
      rootTreeId: ID,
      trees: [],
    });
  });
});
