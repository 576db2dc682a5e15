/**
 * Why this process may not open a Unix socket the daemon listens on, from the socket file itself (mode,
 * owner, group: stat(2)) and the process's own ids: what a client says when connect(2) fails with EACCES or
 * EPERM, instead of "is it running?" (the daemon may be running and serving; unix(7): connecting needs
 * write permission on the socket and search permission on every directory of its path). Loads nothing but
 * node:fs (the health probe uses it too).
 */
import { statSync } from 'node:fs';
import { dirname } from 'node:path';

/** "srw-rw---- (0660), owner uid 0, group gid 0" style text of a file's mode and ids; undefined if unreadable. */
function describe(path: string): string | undefined {
  try {
    const st = statSync(path);
    return `mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}, owner uid ${st.uid}, group gid ${st.gid}`;
  } catch {
    return undefined;
  }
}

/**
 * The text after "you may not open <path>": the socket's mode and ids when this process can see them, else
 * the nearest directory that refuses the search, and the way in (the daemon's --socket-group, or run as
 * its user).
 */
export function socketAccessWhy(path: string): string {
  const ids = `this process runs as uid ${process.getuid?.() ?? '?'} gid ${process.getgid?.() ?? '?'}`;
  const way = "join the socket's group (xdpctld --socket-group) or run as the daemon's user";
  const own = describe(path);
  if (own) return `(${own}; ${ids}): ${way}`;
  // The socket cannot be seen: a directory of its path refuses the search. Name the deepest one we can see.
  for (let d = dirname(path); d !== dirname(d); d = dirname(d)) {
    const dir = describe(d);
    if (dir) return `(its directory ${d} cannot be searched by this process: ${dir}; ${ids}): ${way}`;
  }
  return `(${ids}): ${way}`;
}
