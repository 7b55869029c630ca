/**
 * Tree nodes carry Go's os.FileMode, not a POSIX st_mode: the permission bits are the same
 * (low 9 bits), but the type and the setuid/setgid/sticky flags sit in the high bits. restic
 * stores `mode & (ModePerm | ModeType | ModeSetuid | ModeSetgid | ModeSticky)`, so a directory
 * 0755 is 2^31 + 0o755 = 2147484141 and a symlink is 2^27 + 0o777.
 *
 * The values exceed 2^31, so they are computed with arithmetic, never with JS bitwise
 * operators (which are signed 32-bit).
 */

export const GoFileMode = {
  dir: 2 ** 31,
  append: 2 ** 30,
  exclusive: 2 ** 29,
  temporary: 2 ** 28,
  symlink: 2 ** 27,
  device: 2 ** 26,
  namedPipe: 2 ** 25,
  socket: 2 ** 24,
  setuid: 2 ** 23,
  setgid: 2 ** 22,
  charDevice: 2 ** 21,
  sticky: 2 ** 20,
  irregular: 2 ** 19,
  perm: 0o777,
} as const;

export type NodeType = 'file' | 'dir' | 'symlink' | 'dev' | 'chardev' | 'fifo' | 'socket';

const TYPE_BITS: Record<NodeType, number> = {
  file: 0,
  dir: GoFileMode.dir,
  symlink: GoFileMode.symlink,
  dev: GoFileMode.device,
  chardev: GoFileMode.device + GoFileMode.charDevice,
  fifo: GoFileMode.namedPipe,
  socket: GoFileMode.socket,
};

const S_ISUID = 0o4000;
const S_ISGID = 0o2000;
const S_ISVTX = 0o1000;

/**
 * Go FileMode for a node of `type` with POSIX mode `posixMode` (an st_mode or just its
 * permission bits; the file-type bits of an st_mode are ignored, `type` decides).
 */
export function goFileMode(type: NodeType, posixMode: number): number {
  let mode = TYPE_BITS[type] + (posixMode & 0o777);
  if (posixMode & S_ISUID) mode += GoFileMode.setuid;
  if (posixMode & S_ISGID) mode += GoFileMode.setgid;
  if (posixMode & S_ISVTX) mode += GoFileMode.sticky;
  return mode;
}

/** The POSIX permission bits (0o7777 range: rwx plus setuid/setgid/sticky) of a Go FileMode. */
export function posixPermissions(goMode: number): number {
  let perm = goMode % 512; // low 9 bits, without signed bitwise pitfalls
  if (hasBit(goMode, GoFileMode.setuid)) perm |= S_ISUID;
  if (hasBit(goMode, GoFileMode.setgid)) perm |= S_ISGID;
  if (hasBit(goMode, GoFileMode.sticky)) perm |= S_ISVTX;
  return perm;
}

function hasBit(mode: number, bit: number): boolean {
  return Math.floor(mode / bit) % 2 === 1;
}
