/**
 * restic stores a node's name as Go's strconv.Quote(name) without the surrounding quotes
 * (restic's Node.MarshalJSON), and reads it back with strconv.Unquote. For ordinary names this
 * changes nothing; a name with a backslash, a double quote, a control character or a
 * non-printable rune is stored escaped ('a"b' is stored as 'a\"b', a newline as '\n').
 * Writing names raw would make restic restore such files under mangled names, or fail.
 */

// Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols, and the ASCII space.
const PRINTABLE = /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]$/u;

const SHORT_ESCAPES = new Map<number, string>([
  [0x07, '\\a'],
  [0x08, '\\b'],
  [0x0c, '\\f'],
  [0x0a, '\\n'],
  [0x0d, '\\r'],
  [0x09, '\\t'],
  [0x0b, '\\v'],
]);

/** strconv.Quote(s) without the enclosing double quotes. */
export function goQuoteName(s: string): string {
  let out = '';
  for (const ch of s) {
    const cp = ch.codePointAt(0)!;
    if (ch === '"' || ch === '\\') {
      out += `\\${ch}`;
    } else if (cp >= 0xd800 && cp <= 0xdfff) {
      // a lone surrogate is not valid UTF-8; Go would see U+FFFD
      out += '\\ufffd';
    } else if (PRINTABLE.test(ch)) {
      out += ch;
    } else if (SHORT_ESCAPES.has(cp)) {
      out += SHORT_ESCAPES.get(cp);
    } else if (cp < 0x20 || cp === 0x7f) {
      out += `\\x${hex(cp, 2)}`;
    } else if (cp < 0x10000) {
      out += `\\u${hex(cp, 4)}`;
    } else {
      out += `\\U${hex(cp, 8)}`;
    }
  }
  return out;
}

/**
 * strconv.Unquote('"' + s + '"'): undoes goQuoteName, and reads any Go escape restic may have
 * written (\xNN and octal escapes are raw bytes, decoded as UTF-8 at the end).
 */
export function goUnquoteName(s: string): string {
  const bytes: number[] = [];
  const pushString = (str: string) => {
    for (const b of Buffer.from(str, 'utf8')) bytes.push(b);
  };
  for (let i = 0; i < s.length; ) {
    const ch = s[i]!;
    if (ch !== '\\') {
      const cp = s.codePointAt(i)!;
      const piece = String.fromCodePoint(cp);
      if (piece === '"') throw new Error(`unescaped quote in name ${JSON.stringify(s)}`);
      pushString(piece);
      i += piece.length;
      continue;
    }
    const esc = s[i + 1];
    if (esc === undefined) throw new Error(`dangling backslash in name ${JSON.stringify(s)}`);
    const simple = 'abfnrtv'.indexOf(esc);
    if (simple >= 0) {
      bytes.push([0x07, 0x08, 0x0c, 0x0a, 0x0d, 0x09, 0x0b][simple]!);
      i += 2;
    } else if (esc === '\\' || esc === '"' || esc === "'") {
      bytes.push(esc.charCodeAt(0));
      i += 2;
    } else if (esc === 'x') {
      bytes.push(parseHex(s, i + 2, 2));
      i += 4;
    } else if (esc === 'u') {
      pushString(String.fromCodePoint(parseHex(s, i + 2, 4)));
      i += 6;
    } else if (esc === 'U') {
      pushString(String.fromCodePoint(parseHex(s, i + 2, 8)));
      i += 10;
    } else if (esc >= '0' && esc <= '7') {
      const digits = s.slice(i + 1, i + 4);
      if (!/^[0-7]{3}$/.test(digits) || Number.parseInt(digits, 8) > 255) {
        throw new Error(`bad octal escape in name ${JSON.stringify(s)}`);
      }
      bytes.push(Number.parseInt(digits, 8));
      i += 4;
    } else {
      throw new Error(`unknown escape \\${esc} in name ${JSON.stringify(s)}`);
    }
  }
  return Buffer.from(bytes).toString('utf8');
}

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, '0');
}

function parseHex(s: string, at: number, width: number): number {
  const digits = s.slice(at, at + width);
  if (!new RegExp(`^[0-9a-fA-F]{${width}}$`).test(digits)) {
    throw new Error(`bad hex escape in name ${JSON.stringify(s)}`);
  }
  return Number.parseInt(digits, 16);
}
