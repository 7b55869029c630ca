// The one sodium-native function Holdfast uses (the package ships no type declarations).
declare module 'sodium-native' {
  /** Poly1305 of `message` under the 32-byte one-time key `key` (r || s); writes 16 bytes to `out`. */
  export function crypto_onetimeauth(out: Uint8Array, message: Uint8Array, key: Uint8Array): void;
}
