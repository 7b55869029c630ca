import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  CRYPTO_OVERHEAD,
  decrypt,
  encrypt,
  encryptParts,
  type MasterKey,
  masterKeyFromJson,
  masterKeyToJson,
  newMasterKey,
  poly1305Aes,
} from './crypto.ts';
import { VaultFormatError, VaultIntegrityError } from './errors.ts';

const hex = (s: string) => Buffer.from(s, 'hex');

describe('Poly1305-AES', () => {
  // test vectors of Bernstein's paper "The Poly1305-AES message-authentication code" (2005), appendix B
  const vectors = [
    {
      msg: 'f3f6',
      r: '851fc40c3467ac0be05cc20404f3f700',
      k: 'ec074c835580741701425b623235add6',
      nonce: 'fb447350c4e868c52ac3275cf9d4327e',
      mac: 'f4c633c3044fc145f84f335cb81953de',
    },
    {
      msg: '',
      r: 'a0f3080000f46400d0c7e9076c834403',
      k: '75deaa25c09f208e1dc4ce6b5cad3fbf',
      nonce: '61ee09218d29b0aaed7e154a2c5509cc',
      mac: 'dd3fab2251f11ac759f0887129cc2ee7',
    },
    {
      msg: '663cea190ffb83d89593f3f476b6bc24d7e679107ea26adb8caf6652d0656136',
      r: '48443d0bb0d21109c89a100b5ce2c208',
      k: '6acb5f61a7176dd320c5c1eb2edcdc74',
      nonce: 'ae212a55399729595dea458bc621ff0e',
      mac: '0ee1c16bb73f0f4fd19881753c01cdbe',
    },
  ];
  it.each(vectors)('matches the paper for a $msg.length-hex-digit message', (v) => {
    expect(
      Buffer.from(poly1305Aes({ k: hex(v.k), r: hex(v.r) }, hex(v.nonce), hex(v.msg))).toString('hex'),
    ).toBe(v.mac);
  });
});

describe('encrypt / decrypt', () => {
  it("decrypts restic's own test vector (internal/crypto test values)", () => {
    const key: MasterKey = {
      encrypt: hex('303e8687b1d7db18421bdc6bb8588ccadac4d59ee87b8ff70c44e635790cafef'),
      mac: { k: hex('ef4d8824cb80b2bcc5fbff8a9b12a42c'), r: hex('cc8d4b948ee0ebfe1d415de921d10353') },
    };
    const ciphertext = hex(
      '69fb41c62d12def4593bd71757138606338f621aeaeb39da0fe4f99233f8037a54ea63338a813bcf3f75d8c3cc75dddf8750',
    );
    expect(decrypt(key, ciphertext).toString()).toBe('Dies ist ein Test!');
  });

  it.each([0, 1, 15, 16, 17, 1000, 1024 * 1024 + 3])(
    'round-trips %i bytes with 32 bytes of overhead',
    (n) => {
      const key = newMasterKey();
      const plain = randomBytes(n);
      const sealed = encrypt(key, plain);
      expect(sealed.length).toBe(n + CRYPTO_OVERHEAD);
      expect(decrypt(key, sealed).equals(plain)).toBe(true);
    },
  );

  it('uses a fresh IV every time', () => {
    const key = newMasterKey();
    const a = encrypt(key, Buffer.from('same'));
    const b = encrypt(key, Buffer.from('same'));
    expect(a.subarray(0, 16).equals(b.subarray(0, 16))).toBe(false);
    expect(a.equals(b)).toBe(false);
  });

  it('hands out IVs that are all distinct and never change afterwards, across many blocks of them', () => {
    const key = newMasterKey();
    const first = encryptParts(key, Buffer.from('first'));
    const ivAtFirst = Buffer.from(first[0]);
    const seen = new Set<string>();
    // More than one block of pre-drawn IVs (256 per block).
    for (let i = 0; i < 2000; i++) {
      const [iv, ciphertext, tag] = encryptParts(key, Buffer.from(`blob ${i}`));
      seen.add(iv.toString('hex'));
      expect(decrypt(key, Buffer.concat([iv, ciphertext, tag])).toString()).toBe(`blob ${i}`);
    }
    expect(seen.size).toBe(2000);
    expect(seen.has(ivAtFirst.toString('hex'))).toBe(false);
    expect(first[0].equals(ivAtFirst)).toBe(true);
    expect(decrypt(key, Buffer.concat(first)).toString()).toBe('first');
  });

  it('keeps MACs right for several keys used in turn (each key has its own nonce cipher)', () => {
    const keys = [newMasterKey(), newMasterKey(), newMasterKey()];
    const sealed = [0, 1, 2, 0, 1, 2].map((i) => ({
      i,
      data: encrypt(keys[i]!, Buffer.from(`for key ${i}`)),
    }));
    for (const { i, data } of sealed) {
      expect(decrypt(keys[i]!, data).toString()).toBe(`for key ${i}`);
      expect(() => decrypt(keys[(i + 1) % 3]!, data)).toThrow(/MAC mismatch/);
    }
  });

  it.each([
    ['the IV', 3],
    ['the ciphertext', 20],
    ['the MAC', -5],
  ])('detects a flipped bit in %s and returns nothing', (_what, at) => {
    const key = newMasterKey();
    const sealed = encrypt(key, randomBytes(100));
    const i = at < 0 ? sealed.length + at : at;
    sealed[i]! ^= 0x01;
    expect(() => decrypt(key, sealed)).toThrow(VaultIntegrityError);
    expect(() => decrypt(key, sealed)).toThrow(/MAC mismatch/);
  });

  it('refuses data under another key, and data too short to hold IV and MAC', () => {
    const sealed = encrypt(newMasterKey(), Buffer.from('secret'));
    expect(() => decrypt(newMasterKey(), sealed)).toThrow(VaultIntegrityError);
    expect(() => decrypt(newMasterKey(), Buffer.alloc(31, 1))).toThrow(/too short/);
  });
});

describe('master key JSON', () => {
  it("round-trips restic's JSON form", () => {
    const key = newMasterKey();
    const json = JSON.parse(JSON.stringify(masterKeyToJson(key)));
    expect(Object.keys(json).sort()).toEqual(['encrypt', 'mac']);
    const back = masterKeyFromJson(json);
    expect(
      back.encrypt.equals(key.encrypt) && back.mac.k.equals(key.mac.k) && back.mac.r.equals(key.mac.r),
    ).toBe(true);
  });

  it('rejects missing fields, wrong lengths and all-zero keys', () => {
    expect(() => masterKeyFromJson({ encrypt: 'AAAA' })).toThrow(VaultFormatError);
    const ok = masterKeyToJson(newMasterKey());
    expect(() => masterKeyFromJson({ ...ok, encrypt: Buffer.alloc(16, 1).toString('base64') })).toThrow(
      /lengths/,
    );
    expect(() => masterKeyFromJson({ ...ok, encrypt: Buffer.alloc(32).toString('base64') })).toThrow(/zeros/);
  });
});
