import { randomBytes } from 'node:crypto';

/**
 * The config's `chunker_polynomial`: restic's content-defined chunker uses a random
 * irreducible polynomial of degree 53 over GF(2), and restic refuses to open a repository
 * whose polynomial is not irreducible ("invalid chunker polynomial"). Holdfast cuts fixed-size
 * blocks and never uses it, but `restic backup` into a Holdfast vault does, so it must be a
 * real one. This follows github.com/restic/chunker's DerivePolynomial and Ben-Or's
 * irreducibility test, on BigInt (polynomials of degree <= 64 as bit sets).
 */

export function degree(p: bigint): number {
  return p === 0n ? -1 : p.toString(2).length - 1;
}

function mod(x: bigint, d: bigint): bigint {
  const dd = degree(d);
  let diff = degree(x) - dd;
  while (diff >= 0) {
    x ^= d << BigInt(diff);
    diff = degree(x) - dd;
  }
  return x;
}

function mulMod(a: bigint, b: bigint, m: bigint): bigint {
  let res = 0n;
  a = mod(a, m);
  while (b > 0n) {
    if (b & 1n) res ^= a;
    b >>= 1n;
    a = mod(a << 1n, m);
  }
  return mod(res, m);
}

function gcd(a: bigint, b: bigint): bigint {
  while (b !== 0n) [a, b] = [b, mod(a, b)];
  return a;
}

/** Ben-Or: p is irreducible iff gcd(p, x^(2^i) - x mod p) = 1 for every i <= deg(p)/2. */
export function isIrreducible(p: bigint): boolean {
  const deg = degree(p);
  if (deg < 1) return false;
  let xPow = 2n; // x
  for (let i = 1; i <= Math.floor(deg / 2); i++) {
    xPow = mulMod(xPow, xPow, p); // x^(2^i) mod p
    if (gcd(p, mod(xPow ^ 2n, p)) !== 1n) return false;
  }
  return true;
}

/** A random irreducible polynomial of degree 53, as restic's chunker.RandomPolynomial picks one. */
export function randomPolynomial(): bigint {
  for (let i = 0; i < 1_000_000; i++) {
    let f = randomBytes(8).readBigUInt64LE(0);
    f &= (1n << 54n) - 1n; // keep bits 0..53
    f |= (1n << 53n) | 1n; // degree exactly 53, not divisible by x
    if (isIrreducible(f)) return f;
  }
  throw new Error('found no irreducible polynomial in a million tries');
}

/** restic's JSON form: lower-case hex without 0x. */
export function formatPolynomial(p: bigint): string {
  return p.toString(16);
}

export function parsePolynomial(s: string): bigint {
  if (!/^[0-9a-fA-F]{1,16}$/.test(s)) throw new Error(`not a polynomial: ${JSON.stringify(s)}`);
  return BigInt(`0x${s}`);
}
