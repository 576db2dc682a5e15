/**
 * Devices whose name is not UTF-8, and the names a client may give for one: Linux names are bytes (any but NUL, '/',
 * ':' and white space: `ip link add $'x\xff1' ...`), while every name in a request is a UTF-8 string, so no request
 * can name such a device exactly. What a client can give is the name as it was shown to it: escaped (`x\xff1`, as
 * the daemon and `ip` show it), decoded with U+FFFD for each byte that is not UTF-8 (what a UTF-8 decoder makes of
 * `ip -j` or /sys/class/net), or decoded as Latin-1 (`xÿ1`). A name that names no device but one of those forms of a
 * non-UTF-8 device's name is said as that, not as a device that does not exist. Pure: the devices come from the
 * dataplane (Dataplane.nonUtf8Interfaces).
 */

/** A device of the daemon's namespace whose name is not UTF-8. */
export interface NonUtf8Interface {
  ifindex: number;
  /** Its name's bytes. */
  bytes: Uint8Array;
  /** Its name as text: UTF-8 as it is, the other bytes as `\xNN` (shared/visible.ts nameText). */
  name: string;
}

const lossy = new TextDecoder('utf-8');

/** The device among `devs` that `given` (a name that names no device) can only mean; undefined: none. */
export function nonUtf8Meant(given: string, devs: readonly NonUtf8Interface[]): NonUtf8Interface | undefined {
  return devs.find(
    (d) => given === d.name || given === lossy.decode(d.bytes) || given === String.fromCharCode(...d.bytes),
  );
}

/** The name as a shell's printf takes it (octal escapes for what is not plain ASCII), for a command to copy. */
function printfArg(bytes: Uint8Array): string {
  let out = '';
  for (const b of bytes) {
    out +=
      b > 0x20 && b < 0x7f && b !== 0x27 && b !== 0x5c && b !== 0x25
        ? String.fromCharCode(b)
        : `\\${b.toString(8).padStart(3, '0')}`;
  }
  return out;
}

/** Why `given` cannot be used: the device it means has a name that is not UTF-8, and what to do. */
export function nonUtf8Text(given: string, d: NonUtf8Interface): string {
  return (
    `interface "${given}" names no device: it can only mean the device with ifindex ${d.ifindex}, named ${d.name}, ` +
    'a name that is not UTF-8 (a Linux interface name is bytes), which no request can give (names in requests are ' +
    `UTF-8 strings); rename that device to a UTF-8 name to use it: ip link set dev "$(printf '${printfArg(d.bytes)}')" name NEWNAME`
  );
}
