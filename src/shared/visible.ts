/**
 * Text from whoever wrote the data (an interface name the host gave, a label, a message the daemon copied from
 * the kernel) made safe to reach a terminal: control characters shown visibly, as `ls` and `ip` show them, or
 * escaped in JSON. Shared by the CLI (tables, fields, messages) and the daemon (its log lines, stderr, the
 * Prometheus text): raw, an ESC sequence in a device name could clear the terminal or rewrite the lines above
 * it. Pure functions; imports nothing.
 */

/** One control character made visible: ESC as `\e`, any other as `\xNN`. */
export function visibleChar(c: string): string {
  return c === '\x1b' ? '\\e' : `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
}

// eslint-disable-next-line no-control-regex -- the control characters are what is matched
const CONTROLS = /[\x00-\x08\x0a-\x1f\x7f-\x9f]/g;
// eslint-disable-next-line no-control-regex -- the control characters are what is matched
const CONTROLS_BUT_NEWLINE = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/g;

/**
 * `s` with its control characters made visible: ESC as `\e`, the other C0 controls (but tab, and newline when
 * `newlines`), DEL and the C1 controls as `\xNN`, as `ls` and `ip` show them.
 */
export function visible(s: string, newlines = false): string {
  return s.replace(newlines ? CONTROLS_BUT_NEWLINE : CONTROLS, visibleChar);
}

/**
 * As {@link visible} with `newlines`, the backslash of each escape doubled: for a text format whose strings
 * escape a backslash themselves (Prometheus label values and HELP), where `\\e` reads back as `\e`.
 */
export function visibleEscaped(s: string): string {
  return s.replace(CONTROLS_BUT_NEWLINE, (c) => `\\${visibleChar(c)}`);
}

/** Whether `s` holds a control character {@link visible} (with `newlines`) would replace. */
export function hasControls(s: string): boolean {
  CONTROLS_BUT_NEWLINE.lastIndex = 0;
  return CONTROLS_BUT_NEWLINE.test(s);
}

const DEL_C1 = /[\x7f-\x9f]/g;

/**
 * JSON text with DEL and the C1 controls escaped as `\u007f` ... `\u009f` (still the same JSON):
 * JSON.stringify (and pino) escape C0 but write those raw.
 */
export function jsonControls(text: string): string {
  return text.replace(DEL_C1, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A Linux interface name (bytes: the kernel takes any byte but NUL, '/', ':' and white space) as text: what is
 * UTF-8 as it is, each byte that is not part of a valid UTF-8 sequence as `\xNN`, as `ip` prints it where the
 * terminal cannot. A plain decode would put U+FFFD in its place, and that text names no device.
 */
export function nameText(bytes: Uint8Array): string {
  let out = '';
  for (let i = 0; i < bytes.length;) {
    const c = bytes[i];
    const n = c < 0x80 ? 1 : c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
    if (n > 0 && i + n <= bytes.length) {
      try {
        out += strictUtf8.decode(bytes.subarray(i, i + n));
        i += n;
        continue;
      } catch {
        // not a valid sequence (a stray continuation byte, an overlong form, a surrogate): its first byte escaped
      }
    }
    out += `\\x${c.toString(16).padStart(2, '0')}`;
    i++;
  }
  return out;
}
